#!/usr/bin/env bash
# baton accepting mail: `loadgen send` -> baton (durable, group commit)
# against `loadgen send` -> `loadgen sink` (no disk: the machine's limit),
# side by side, ROUNDS times. Everything on loopback.
#
#   bench/inbound.sh                 # 3 rounds, 100000 messages of 5 KiB, 50 connections
#   ROUNDS=5 COUNT=200000 bench/inbound.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-100000}
CONNECTIONS=${CONNECTIONS:-50}
SIZE=${SIZE:-5KiB}
LOG_LEVEL=${LOG_LEVEL:-info}
SMTP_PORT=${SMTP_PORT:-2626}
ADMIN_PORT=${ADMIN_PORT:-8126}
SINK_PORT=${SINK_PORT:-2727}

cargo build --release -q -p baton -p baton-loadgen
BATON=target/release/baton
LOADGEN=target/release/loadgen
WORK=$(mktemp -d -p target bench-inbound.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cat > "$WORK/baton.toml" <<TOML
[server]
hostname = "bench.invalid"
[[listener]]
address = "127.0.0.1:$SMTP_PORT"
[spool]
path = "$WORK/spool"
[admin]
address = "127.0.0.1:$ADMIN_PORT"
[log]
level = "$LOG_LEVEL"
TOML

send() {
    "$LOADGEN" send -q --json -c "$CONNECTIONS" -n "$COUNT" -s "$SIZE" --domains example.org "$1" \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["messages_per_second"]))'
}

wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

printf "%-6s %14s %14s %8s\n" round "direct msg/s" "baton msg/s" ratio
for round in $(seq 1 "$ROUNDS"); do
    "$LOADGEN" sink -l "127.0.0.1:$SINK_PORT" --no-starttls > /dev/null 2>&1 &
    sink=$!
    wait_port "$SINK_PORT"
    direct=$(send "127.0.0.1:$SINK_PORT")
    kill -TERM $sink; wait $sink 2>/dev/null || true

    rm -rf "$WORK/spool"
    "$BATON" run --config "$WORK/baton.toml" 2> "$WORK/baton.log" &
    baton=$!
    wait_port "$ADMIN_PORT"
    relay=$(send "127.0.0.1:$SMTP_PORT")
    kill -TERM $baton; wait $baton

    printf "%-6s %14s %14s %8s\n" "$round" "$direct" "$relay" \
        "$(python3 -c "print(f'{$relay/$direct:.2f}')")"
done
