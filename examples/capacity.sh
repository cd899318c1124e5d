#!/usr/bin/env bash
# Capacity run: starts a release gateway (hold music patched to every caller, so every
# call's downlink carries real audio through the engine and both resamplers), opens N
# paced 8 kHz calls with examples/loadgen on the same machine, and reports underruns
# from the gateway's per-call summaries, downlink cadence from loadgen, and memory.
#
# usage: examples/capacity.sh CALLS [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:?usage: capacity.sh CALLS [SECONDS]}
seconds=${2:-15}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p telepatch -p telepatch-examples --bin telepatch --example loadgen
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/capacity.toml" <<EOT
[audiosocket]
listen = "127.0.0.1:19500"
max_calls = 20000
[lobby]
hold_music = "$PWD/tests/data/hold-music-48k.wav"
EOT
./target/release/telepatch --config "$work/capacity.toml" serve 2>"$work/gateway.log" &
gateway=$!
sleep 1
rss_idle=$(ps -o rss= -p "$gateway")
./target/release/examples/loadgen --connect 127.0.0.1:19500 --calls "$calls" \
    --duration "$seconds" --stagger-ms 5 --gateway-pid "$gateway" >"$work/loadgen.log" 2>&1 &
loadgen=$!
sleep $((seconds / 2 + calls * 5 / 1000 + 1))
rss_loaded=$(ps -o rss= -p "$gateway")
wait "$loadgen" || echo "loadgen reported failed calls"
sleep 1
kill -TERM "$gateway"
wait "$gateway" || true
echo "calls: $calls for ${seconds}s; gateway RSS idle ${rss_idle} KiB, loaded ${rss_loaded} KiB," \
     "$(( (rss_loaded - rss_idle) / calls )) KiB per call"
python3 - "$work/gateway.log" <<'PY'
import re, sys
ended = underruns = gaps = worst = 0
for line in open(sys.argv[1]):
    if "call ended" in line:
        ended += 1
        underruns += int(re.search(r"downlink_underruns=(\d+)", line).group(1))
        g = int(re.search(r"uplink_gaps=(\d+)", line).group(1))
        gaps += g
        worst = max(worst, g)
print(f"calls ended {ended}; downlink underruns {underruns}; "
      f"uplink gaps {gaps} (worst call {worst})")
PY
grep -E "^calls |frames sent|inter-arrival|CPU:" "$work/loadgen.log"
