#!/usr/bin/env bash
# loadgen send → loadgen sink against Postfix's smtp-source → smtp-sink, side
# by side, same message size and concurrency, a few rounds (the machine is
# shared: alternate, and read the spread). Issue 4's target: loadgen faster,
# 1.5x or more.
#
#   cargo build --release -p baton-loadgen
#   bench/loadgen-vs-postfix.sh                       # 3 rounds, 200000 messages, 50 connections
#   ROUNDS=5 MESSAGES=100000 CONNECTIONS=50 bench/loadgen-vs-postfix.sh
#
# Needs smtp-source and smtp-sink (apt-get install postfix; no Postfix
# instance runs). Rates are messages over wall time of the sending process,
# for both tools. smtp-source -l counts the body only; loadgen --size counts
# the whole message, so loadgen is given the size smtp-source's messages have
# on the wire (its headers are 112 bytes: 5120 → 5232).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-200000}
CONNECTIONS=${CONNECTIONS:-50}
BODY_BYTES=${BODY_BYTES:-5120}
WIRE_BYTES=$((BODY_BYTES + 112))
LOADGEN=${LOADGEN:-"$(dirname "$0")/../target/release/loadgen"}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}

for tool in "$LOADGEN" "$SMTP_SOURCE" "$SMTP_SINK"; do
    [ -x "$tool" ] || { echo "missing $tool" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1 / ($3 - $2):.0f}')"; }

loadgen_round() {
    local port; port=$(free_port)
    "$LOADGEN" sink --listen "127.0.0.1:$port" --no-starttls >/dev/null 2>"$work/sink.err" &
    local sink=$!
    until grep -q listening "$work/sink.err" 2>/dev/null; do sleep 0.05; done
    local start end
    start=$(now)
    "$LOADGEN" send "127.0.0.1:$port" -q -n "$MESSAGES" -c "$CONNECTIONS" --size "$WIRE_BYTES" "$@" \
        --report "$work/send.json" >/dev/null
    end=$(now)
    kill -TERM "$sink"; wait "$sink" || true
    python3 - "$work/send.json" "$MESSAGES" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
assert report["messages_accepted"] == int(sys.argv[2]), report["messages_accepted"]
PY
    rate "$MESSAGES" "$start" "$end"
}

postfix_round() {
    local port; port=$(free_port)
    local user=(); [ "$(id -u)" = 0 ] && user=(-u nobody)
    "$SMTP_SINK" "${user[@]}" "127.0.0.1:$port" 256 &
    local sink=$!
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port)).close()" 2>/dev/null; do sleep 0.05; done
    local start end
    start=$(now)
    "$SMTP_SOURCE" -d -s "$CONNECTIONS" -m "$MESSAGES" -l "$BODY_BYTES" "127.0.0.1:$port"
    end=$(now)
    kill "$sink"; wait "$sink" 2>/dev/null || true
    rate "$MESSAGES" "$start" "$end"
}

printf '%-6s %22s %22s %24s %8s\n' round "loadgen msg/s" "postfix msg/s" "loadgen no-pipe msg/s" ratio
for round in $(seq 1 "$ROUNDS"); do
    lg=$(loadgen_round)
    pf=$(postfix_round)
    np=$(loadgen_round --no-pipelining)
    printf '%-6s %22s %22s %24s %8s\n' "$round" "$lg" "$pf" "$np" "$(python3 -c "print(f'{$lg / $pf:.2f}x')")"
done
echo "($MESSAGES messages of $WIRE_BYTES bytes, $CONNECTIONS connections, each tool's sender and sink on this machine)"
