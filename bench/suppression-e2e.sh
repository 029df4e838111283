#!/usr/bin/env bash
# baton accepting mail with the suppression list off, and on with a list of
# SUPPRESSION_DB's entries (a file the lookup bench leaves with
# SUPPRESSION_KEEP=1), alternating, ROUNDS times each. `loadgen send`'s
# recipients are not on the list: the common case, a lookup that misses.
#
#   SUPPRESSION_KEEP=1 cargo bench -p baton --bench suppression_lookup
#   bench/suppression-e2e.sh
#   TARGET=/path/to/target PROFILE=bench ROUNDS=3 bench/suppression-e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-100000}
CONNECTIONS=${CONNECTIONS:-50}
SIZE=${SIZE:-5KiB}
SMTP_PORT=${SMTP_PORT:-2628}
ADMIN_PORT=${ADMIN_PORT:-8128}
TARGET=${TARGET:-target}
PROFILE=${PROFILE:-release}
SUPPRESSION_DB=${SUPPRESSION_DB:-$PWD/target/bench-suppression/suppression.redb}

BATON=$TARGET/$PROFILE/baton
LOADGEN=$TARGET/$PROFILE/loadgen
[ -f "$SUPPRESSION_DB" ] || { echo "no list at $SUPPRESSION_DB (see the top of this file)" >&2; exit 1; }
WORK=$(mktemp -d -p "$TARGET" bench-suppression-e2e.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

config() {
    cat > "$WORK/baton.toml" <<TOML
[server]
hostname = "bench.invalid"
[[listener]]
address = "127.0.0.1:$SMTP_PORT"
[spool]
path = "$WORK/spool"
[admin]
address = "127.0.0.1:$ADMIN_PORT"
[suppression]
enabled = $1
path = "$SUPPRESSION_DB"
# loadgen's example.org has a null MX: its bounces would fill the list.
from_bounces = false
[log]
level = "warn,baton::policy::suppression=info"
TOML
}

send() {
    "$LOADGEN" send -q --json -c "$CONNECTIONS" -n "$COUNT" -s "$SIZE" --domains example.org "$1" \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["messages_per_second"]))'
}

wait_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

run() {
    config "$1"
    rm -rf "$WORK/spool"
    "$BATON" run --config "$WORK/baton.toml" 2> "$WORK/baton.log" &
    baton=$!
    wait_port "$SMTP_PORT"
    # The Bloom filter is built from the list at open (seconds for ten
    # million): measure the steady state.
    if [ "$1" = true ]; then
        for _ in $(seq 1 1200); do
            grep -q "filter built" "$WORK/baton.log" && break
            sleep 0.05
        done
    fi
    send "127.0.0.1:$SMTP_PORT"
    kill -TERM $baton; wait $baton || true
}

printf "%-6s %12s %12s %8s\n" round "off msg/s" "on msg/s" ratio
for round in $(seq 1 "$ROUNDS"); do
    off=$(run false)
    on=$(run true)
    printf "%-6s %12s %12s %8s\n" "$round" "$off" "$on" "$(python3 -c "print(f'{$on/$off:.3f}')")"
done
