#!/bin/sh
# Issue 12's end-to-end signing figures: one baton (2 shards, default
# sign_threads), one sink, 5 KiB messages over 50 pipelining connections,
# alternating rounds of
#   unsigned  From: a domain without a key
#   ed25519   every message signed with Ed25519
#   rsa       every message signed with RSA-2048
# then unsigned traffic at a fixed rate (open loop) while RSA-signed
# traffic saturates the same server: its p99 accept latency, against the
# same rate on an idle server.
# Usage: bench/dkim-e2e.sh BIN_DIR ROUNDS (BIN_DIR holds baton and loadgen)
#        SIGN_THREADS=4 bench/dkim-e2e.sh ...   ([dkim_defaults] sign_threads)
set -eu
BIN=${1:-target/release}
ROUNDS=${2:-3}
SIGN_THREADS=${SIGN_THREADS:-2}
D=$(mktemp -d /tmp/dkimbench.XXXXXX)
$BIN/baton dkim keygen rsa.bench s1 --algorithm rsa-sha256 --out $D/rsa.pem >/dev/null
$BIN/baton dkim keygen ed.bench s1 --algorithm ed25519-sha256 --out $D/ed.pem >/dev/null
cat > $D/baton.toml <<T
[server]
shards = 2
[[listener]]
address = "127.0.0.1:2636"
[spool]
path = "$D/spool"
[admin]
address = "127.0.0.1:8136"
[limits]
connections_per_ip_max = 20000
[log]
level = "warn"
[dkim_defaults]
sign_threads = $SIGN_THREADS
[[route]]
domain = "*"
next_hop = "127.0.0.3:2737"
[[dkim]]
domain = "rsa.bench"
selector = "s1"
key = "$D/rsa.pem"
[[dkim]]
domain = "ed.bench"
selector = "s1"
algorithm = "ed25519-sha256"
key = "$D/ed.pem"
T
$BIN/loadgen sink --listen 127.0.0.3:2737 --threads 1 --no-starttls >/dev/null 2>&1 &
SINK=$!
$BIN/baton run --config $D/baton.toml 2>$D/baton.log &
BATON=$!
trap 'kill $SINK $BATON 2>/dev/null; wait 2>/dev/null; rm -rf $D' EXIT
for i in $(seq 100); do grep -q "accepting SMTP" $D/baton.log 2>/dev/null && break; sleep 0.1; done
# messages/s and failures of one run; extra arguments go to loadgen send.
rate() {
  $BIN/loadgen send 127.0.0.1:2636 -c 50 -s 5KiB --json "$@" 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print(int(r["messages_per_second"]), r["messages_failed"])'
}
p99() {
  $BIN/loadgen send 127.0.0.1:2636 -c 10 -s 5KiB --json "$@" 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); m=r["latency"]["message"]; print(int(r["messages_per_second"]), "p50", m["p50_ms"], "p99", m["p99_ms"], "failed", r["messages_failed"])'
}
echo "round  unsigned(msg/s failed)  ed25519  rsa-2048"
for r in $(seq $ROUNDS); do
  u=$(rate -n 100000 --from a@plain.bench)
  e=$(rate -n 100000 --from a@ed.bench)
  s=$(rate -n 20000 --from a@rsa.bench)
  echo "$r  $u  $e  $s"
done
echo "unsigned at 500 msg/s, idle server: $(p99 -r 500 -n 5000 --from a@plain.bench)"
$BIN/loadgen send 127.0.0.1:2636 -c 50 -s 5KiB -d 15s --from a@rsa.bench --json >$D/rsa.json 2>/dev/null &
LOAD=$!
sleep 2
echo "unsigned at 500 msg/s, RSA-signed traffic saturating: $(p99 -r 500 -n 5000 --from a@plain.bench)"
wait $LOAD
echo "the RSA-signed load meanwhile: $(python3 -c 'import json; r=json.load(open("'$D'/rsa.json")); print(int(r["messages_per_second"]), "msg/s")')"
grep -c "signing failed" $D/baton.log || true
