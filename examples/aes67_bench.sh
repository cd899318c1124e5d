#!/usr/bin/env bash
# AES67 benchmark run (docs/BENCHMARKS.md, "AES67 flows"): starts a release gateway on
# loopback, then for each flow count given runs examples/aes67_load against it: N
# 8-channel 1 ms flows, cadence and timing measured by a receiver on the same machine,
# the gateway's CPU from /proc, and (with the first count) the latency from an
# AudioSocket frame to the RTP packet carrying its first sample.
#
# usage: examples/aes67_bench.sh [SECONDS] [FLOWS...]     (default: 20 s; 8 16 32 64)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
counts=("$@")
if ((${#counts[@]} == 0)); then counts=(8 16 32 64); fi
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p telepatch -p telepatch-examples --bin telepatch --example aes67_load
work=$(mktemp -d)
trap 'kill "$gateway" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/bench.toml" <<EOT
[audiosocket]
listen = "127.0.0.1:19600"
[api]
listen = "127.0.0.1:18600"
[aes67]
sap_listen = false
[log]
level = "warn"
EOT
"$target/release/telepatch" --config "$work/bench.toml" serve 2>"$work/gateway.log" &
gateway=$!
sleep 2
export TELEPATCH_TOKEN
TELEPATCH_TOKEN=$("$target/release/telepatch" --config "$work/bench.toml" token create --name bench --scope admin)
# The idle gateway's CPU (engine thread, SAP and API idling), to subtract per flow.
ticks() { awk '{print $14 + $15}' "/proc/$gateway/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks); sleep 10; after=$(ticks)
echo "idle gateway CPU: $(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN { printf "%.1f", t / hz / 10 * 100 }') % of one core"
first=1
for flows in "${counts[@]}"; do
    echo "== $flows flows"
    probe=()
    if ((first)); then probe=(--audiosocket 127.0.0.1:19600); first=0; fi
    "$target/release/examples/aes67_load" --api http://127.0.0.1:18600 --flows "$flows" \
        --channels 8 --seconds "$seconds" --pid "$gateway" "${probe[@]}"
    sleep 1
done
