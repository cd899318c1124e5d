#!/usr/bin/env bash
# Jam room benchmarks (docs/BENCHMARKS.md, "Jam rooms"): a release gateway hosting one
# RTJam room on loopback. examples/jam_latency measures caller <-> jammer latency
# through it, with the default call buffering and with a low-latency one
# (audiosocket.uplink_buffer_ms = 5, audiosocket.frame_ms = 10); then examples/jam_load
# loads the room with N jammers at 375 packets/s each and reads the gateway's CPU time.
#
# usage: examples/jam_bench.sh [SECONDS] [MEMBERS...]   (default 10 s; 4 8 16 24 32; 0: latency only)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
members=${*:-4 8 16 24 32}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p telepatch -p telepatch-examples --bin telepatch \
    --example jam_load --example jam_latency
work=$(mktemp -d)
gateway=
trap 'if [ -n "$gateway" ]; then kill "$gateway" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
uuid=1a7e0000-0000-4000-8000-000000000001
api=http://127.0.0.1:19601

# Starts a gateway with extra [audiosocket] settings ($1) and a hosted room jam:bench.
start() {
    rm -f "$work/jam.db"
    cat > "$work/jam.toml" <<EOT
[audiosocket]
listen = "127.0.0.1:19600"
$1
[api]
listen = "127.0.0.1:19601"
[database]
url = "sqlite://$work/jam.db"
[[routes]]
name = "bench"
match = { uuid = "$uuid" }
actions = [{ action = "jam", room = "bench" }]
EOT
    "$target/release/telepatch" --config "$work/jam.toml" serve 2>"$work/gateway.log" &
    gateway=$!
    sleep 1
    token=$("$target/release/telepatch" --config "$work/jam.toml" token create --name bench --scope admin 2>/dev/null)
    curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d '{"name": "bench", "persistent": false, "config": {"kind": "jam", "mode": "host", "listen": "127.0.0.1:19602"}}' \
        "$api/v1/nodes" >/dev/null
}

stop() {
    kill -TERM "$gateway"
    wait "$gateway" || true
    gateway=
}

latency() {
    "$target/release/examples/jam_latency" --audiosocket 127.0.0.1:19600 --room 127.0.0.1:19602 \
        --uuid "$uuid" --bursts 40
    curl -sf -H "Authorization: Bearer $token" "$api/v1/nodes/jam:bench" | python3 -c '
import json, sys
for m in json.load(sys.stdin)["status"]["members"]:
    if "target_ms" in m:
        print("jitter buffer of", m["client_id"], ": target", m["target_ms"], "ms, depth", m["buffer_ms"], "ms")'
}

echo "== latency through the room, default call buffering"
start ""
latency
stop
echo "== latency through the room, uplink_buffer_ms = 5, frame_ms = 10"
start "uplink_buffer_ms = 5
frame_ms = 10"
latency
for n in $members; do
    [ "$n" = 0 ] && continue
    echo "== forwarding, $n members"
    "$target/release/examples/jam_load" --room 127.0.0.1:19602 --members "$n" \
        --seconds "$seconds" --gateway-pid "$gateway"
done
stop
