#!/bin/sh
# Issue 11's AUTH figures: the same baton, the same sink, the same sender;
# authenticated once per connection vs not at all, then one message per
# connection (authenticating each time) with and without the cache.
# Usage: bench/auth-bench.sh BIN_DIR ROUNDS (BIN_DIR holds baton and loadgen)
set -eu
BIN=${1:-/work/main/target/release}
ROUNDS=${2:-3}
D=$(mktemp -d /tmp/authbench.XXXXXX)
cat > $D/cli.toml <<T
[auth]
users = "$D/users.toml"
T
printf '%s\n' 's3cret-password' | $BIN/baton user add app --config $D/cli.toml >/dev/null
conf() { # $1 = cache_ttl
cat > $D/baton.toml <<T
[server]
shards = 2
[[listener]]
address = "127.0.0.1:2626"
auth_plaintext = true
[auth]
users = "$D/users.toml"
cache_ttl = "$1"
failures_max = 1000000
[spool]
path = "$D/spool"
[admin]
address = "127.0.0.1:8126"
[limits]
connections_per_ip_max = 20000
[relay]
networks = ["127.0.0.0/8"]
[[route]]
domain = "*"
next_hop = "127.0.0.3:2727"
T
}
$BIN/loadgen sink --listen 127.0.0.3:2727 --threads 1 --no-starttls >/dev/null 2>&1 &
SINK=$!
trap 'kill $SINK 2>/dev/null; kill $BATON 2>/dev/null; rm -rf $D' EXIT
start() {
  rm -rf $D/spool
  conf "$1"
  $BIN/baton run --config $D/baton.toml 2>$D/baton.log &
  BATON=$!
  for i in $(seq 100); do grep -q "accepting SMTP" $D/baton.log && break; sleep 0.1; done
}
stop() { kill $BATON; wait $BATON 2>/dev/null || true; }
rate() { $BIN/loadgen send "$@" --json 2>/dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin); print(int(r.get("messages_per_second", r.get("rate", 0))), r.get("messages_failed", "?"))'; }
AUTH="--auth-user app --auth-password s3cret-password"
start 5m
for r in $(seq $ROUNDS); do
  echo "round $r: 50 conns, 5 KiB, pipelined: plain $(rate 127.0.0.1:2626 -c 50 -n 100000 -s 5KiB)  auth $(rate 127.0.0.1:2626 -c 50 -n 100000 -s 5KiB $AUTH)"
done
for r in $(seq $ROUNDS); do
  echo "round $r: 50 clients, 1 message per connection, AUTH each: cache $(rate 127.0.0.1:2626 -c 50 -m 1 -n 20000 -s 5KiB $AUTH)"
done
stop
start 0s
for r in $(seq $ROUNDS); do
  echo "round $r: 50 clients, 1 message per connection, AUTH each: no cache $(rate 127.0.0.1:2626 -c 50 -m 1 -n 2000 -s 5KiB $AUTH)   no auth $(rate 127.0.0.1:2626 -c 50 -m 1 -n 20000 -s 5KiB)"
done
stop
