#!/usr/bin/env bash
# AoDNS broadcast figures (docs/BENCHMARKS.md): starts a release gateway on loopback
# (DNS server on one runtime thread, rate limit off, UDP replies up to 4096 bytes), puts
# a fake caller's 440 Hz tone on air in a 75-pack broadcast, then measures
#   1. the encoder thread's CPU per broadcast-second (resampling, Opus, packing,
#      publishing), from /proc, over 20 s;
#   2. seq_<n> lookups per second with examples/dns_load, over UDP (whole packs in
#      one 2.3 kB datagram) and TCP, with the DNS thread's CPU share meanwhile;
#   3. the delay of a new listener (examples/aodns_delay, telepatch listen-dns) for
#      windows of 5, 20 and 75 packs.
# The load generator runs on the same machine, so it competes with the server for the
# same cores: "per core" figures divide by the DNS thread's measured CPU share.
#
# usage: examples/dns_bench.sh            environment: KEEP=1 (keep logs), SKIP_DELAY=1
set -euo pipefail
cd "$(dirname "$0")/.."
as_port=${AS_PORT:-19590}
api_port=${API_PORT:-18590}
dns_port=${DNS_PORT:-15353}
api="http://127.0.0.1:$api_port"
cargo build --release -q -p telepatch -p telepatch-examples --bin telepatch \
    --example dns_load --example aodns_delay --example fake_asterisk
bin=${CARGO_TARGET_DIR:-target}/release

work=$(mktemp -d)
gateway="" caller=""
cleanup() {
    [ -n "$caller" ] && kill "$caller" 2>/dev/null || true
    [ -n "$gateway" ] && kill -TERM "$gateway" 2>/dev/null && wait "$gateway" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

cat > "$work/bench.toml" <<EOT
[audiosocket]
listen = "127.0.0.1:$as_port"
[api]
listen = "127.0.0.1:$api_port"
[database]
url = "sqlite://$work/bench.db"
[dns]
listen = "127.0.0.1:$dns_port"
rate_limit_qps = 0
max_udp_payload = 4096
worker_threads = 1
[[routes]]
name = "on-air"
match = { uuid_prefix = "d0d0" }
actions = [{ action = "broadcast", domain = "music.example.com" }]
EOT
telepatch=("$bin/telepatch" --config "$work/bench.toml")
token=$("${telepatch[@]}" token create --name bench --scope admin 2>/dev/null)
"${telepatch[@]}" serve 2>"$work/gateway.log" &
gateway=$!
for _ in $(seq 100); do
    curl -sf --max-time 1 "$api/healthz" >/dev/null && break
    kill -0 "$gateway" 2>/dev/null || { cat "$work/gateway.log"; exit 1; }
    sleep 0.1
done
hz=$(getconf CLK_TCK)
# CPU ticks (user + system) of the gateway's threads whose name starts with $1.
thread_ticks() {
    local total=0 task
    for task in /proc/"$gateway"/task/*; do
        if [[ $(cat "$task/comm" 2>/dev/null) == "$1"* ]]; then
            total=$(( total + $(awk '{ print $14 + $15 }' "$task/stat") ))
        fi
    done
    echo "$total"
}
now_ms() { date +%s%3N; }
status() { curl -sf -H "Authorization: Bearer $token" "$api/v1/nodes/dns:music-example-com" | jq -c "$1"; }

echo "=== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin"/examples/fake_asterisk --connect "127.0.0.1:$as_port" \
    --uuid "d0d0$(cat /proc/sys/kernel/random/uuid | cut -c5-)" --tone 440 --level-dbfs -6 \
    --duration 600 >"$work/caller.log" 2>&1 &
caller=$!
for _ in $(seq 200); do
    packs=$(status '.status.packs_published' 2>/dev/null || echo 0)
    [ "${packs:-0}" -ge 20 ] && break
    sleep 0.5
done
echo "broadcast: $(status '.status | {window, current_sequence, pack_duration_ms, frames_per_pack, bitrate_bps}')"

echo "=== encoder thread CPU over 20 s of broadcast"
t0=$(now_ms); c0=$(thread_ticks aodns-); f0=$(status '.status.frames_encoded')
sleep 20
t1=$(now_ms); c1=$(thread_ticks aodns-); f1=$(status '.status.frames_encoded')
awk -v c=$((c1 - c0)) -v hz="$hz" -v f=$((f1 - f0)) -v ms=$((t1 - t0)) 'BEGIN {
    cpu_ms = c * 1000 / hz; audio_s = f * 0.06
    printf "%.1f s of audio in %.1f s: %.0f ms CPU, %.1f ms per broadcast-second (%.2f %% of a core)\n",
        audio_s, ms / 1000, cpu_ms, cpu_ms / audio_s, cpu_ms / ms * 100 }'

load() {
    echo "=== dns_load $*"
    local t0 c0 t1 c1
    t0=$(now_ms); c0=$(thread_ticks telepatch-dns)
    "$bin"/examples/dns_load --server "127.0.0.1:$dns_port" \
        --domain music.example.com --duration 10 "$@"
    t1=$(now_ms); c1=$(thread_ticks telepatch-dns)
    awk -v c=$((c1 - c0)) -v hz="$hz" -v ms=$((t1 - t0)) 'BEGIN {
        printf "DNS runtime thread: %.0f %% of one core during the run\n", c * 1000 / hz / ms * 100 }'
}
load --workers 2 --in-flight 16
load --workers 2 --in-flight 16 --tcp
load --workers 2 --in-flight 16 --edns 0
echo "queries seen by the broadcast: $(status '.status | {queries_total, queries_per_second, distinct_listeners, truncated}')"

if [ "${SKIP_DELAY:-0}" != 1 ]; then
    for window in 5 20 75; do
        "$bin"/examples/aodns_delay --api "$api" --token "$token" \
            --audiosocket "127.0.0.1:$as_port" --dns "127.0.0.1:$dns_port" \
            --telepatch "$bin/telepatch" --window "$window" --listen 30
    done
fi
echo "=== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
