#!/usr/bin/env bash
# API latency under load: starts a release gateway on loopback (hold music patched to
# every caller, a temporary SQLite database and a read token) and measures
# `GET /v1/calls` at page sizes 1000 (the full page) and 100 (the default), plus
# `GET /healthz`, with examples/api_latency: first with no call, then while
# examples/loadgen holds CALLS paced 8 kHz calls on the same machine. Also prints the
# gateway's and loadgen's CPU use with the calls up, the size of the full page, loadgen's
# summary and the gateway's per-call summaries. Each measurement under load stops after
# REQUESTS requests or a time cap (so that all of them happen while every call is up),
# and a request gets 10 s before it counts as timed out.
#
# usage: examples/api_bench.sh [CALLS] [REQUESTS]      (defaults 1000 and 500)
# environment: CONCURRENCY (api_latency workers, default 1), DURATION (seconds each call
#              lasts, default 60), HOLD=0 (no hold music), TALKING (how many of the
#              calls send audio, default all; the rest send none, as an idle bridged
#              Asterisk channel does, and only listen),
#              KEEP=1 (keep the work directory with the logs), AS_PORT, API_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-1000}
requests=${2:-500}
concurrency=${CONCURRENCY:-1}
as_port=${AS_PORT:-19580}
api_port=${API_PORT:-18580}
seconds=${DURATION:-60}
stagger_ms=2
cap=$(( seconds > 50 ? (seconds - 25) / 2 : 5 ))
api="http://127.0.0.1:$api_port"
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p telepatch -p telepatch-examples --bin telepatch \
    --example loadgen --example api_latency

work=$(mktemp -d)
gateway="" loadgen="" watchdog=""
cleanup() {
    [ -n "$loadgen" ] && kill "$loadgen" 2>/dev/null || true
    [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null || true
    [ -n "$gateway" ] && kill -TERM "$gateway" 2>/dev/null && wait "$gateway" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

hold=""
if [ "${HOLD:-1}" != 0 ]; then hold="hold_music = \"$PWD/tests/data/hold-music-48k.wav\""; fi
cat > "$work/bench.toml" <<EOT
[audiosocket]
listen = "127.0.0.1:$as_port"
max_calls = $((calls + calls / 10 + 100))
[api]
listen = "127.0.0.1:$api_port"
[database]
url = "sqlite://$work/bench.db"
[lobby]
$hold
EOT
telepatch=(./target/release/telepatch --config "$work/bench.toml")
token=$("${telepatch[@]}" token create --name bench --scope read 2>/dev/null)
# Started directly (no function or subshell) so that $! is the gateway's own pid.
"${telepatch[@]}" serve 2>"$work/gateway.log" &
gateway=$!
gateway_t0=$(date +%s%3N)
for _ in $(seq 100); do
    curl -sf --max-time 1 "$api/healthz" >/dev/null && break
    kill -0 "$gateway" 2>/dev/null || { cat "$work/gateway.log"; exit 1; }
    sleep 0.1
done

get() { curl -sf --max-time 20 -H "Authorization: Bearer $token" "$api$1"; }
# Number of live calls the API reports ("?" if it does not answer within 20 s).
live() {
    local page
    page=$(get "/v1/calls?limit=1") && jq .total <<<"$page" || echo "?"
}
# CPU time (user + system) of a process so far, in clock ticks (0 once it has exited).
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
now_ms() { date +%s%3N; }
hz=$(getconf CLK_TCK)
# Percent of one core: cpu_pct TICKS MILLISECONDS.
cpu_pct() { echo $(( $1 * 100000 / ($2 * hz) )); }
# loadgen's CPU share, unless it exited during the interval (its ticks are then gone).
loadgen_pct() {
    if kill -0 "$loadgen" 2>/dev/null; then echo "$(cpu_pct "$1" "$2")%"; else echo "(exited)"; fi
}
# The gateway's own time for GET /v1/calls so far (handler and JSON encoding, from its
# request histogram on /metrics): "SECONDS COUNT".
server_time() {
    curl -sf --max-time 20 "$api/metrics" | awk '
        /^telepatch_api_request_duration_seconds_sum\{/ && /route="\/v1\/calls"/ { s = $NF }
        /^telepatch_api_request_duration_seconds_count\{/ && /route="\/v1\/calls"/ { c = $NF }
        END { print s + 0, c + 0 }'
}
# Runs api_latency on a path; a failure is reported, not fatal (the logs still matter).
probe() {
    local path=$1; shift
    echo "--- GET $path"
    local before after
    before=$(server_time)
    ./target/release/examples/api_latency --url "$api$path" --token "$token" \
        --concurrency "$concurrency" --timeout 10 "$@" || echo "api_latency failed (exit $?)"
    after=$(server_time)
    if [[ $path == /v1/calls* ]]; then
        echo "$before $after" | awk '$4 > $2 { printf "gateway-side time (handler + JSON), mean " \
            "over %d requests incl. warm-up: %.3f ms\n", $4 - $2, ($3 - $1) * 1000 / ($4 - $2) }'
    fi
}
# /healthz (no work at all: how long the gateway's runtime takes to answer anything),
# then GET /v1/calls at both page sizes, cheapest first (the full page is the one most
# likely to disturb what follows), each capped at $cap seconds so that the whole
# measurement fits while the calls are up.
measure() {
    echo "=== $1"
    probe "/healthz" --requests "$requests" --warmup 5 --duration 5
    probe "/v1/calls?limit=100" --requests "$requests" --warmup 5 --duration "$cap"
    probe "/v1/calls?limit=1000" --requests "$requests" --warmup 5 --duration "$cap"
}

echo "=== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
measure "0 calls"

echo "=== starting $calls calls of ${seconds}s, ${stagger_ms} ms apart, ${TALKING:-$calls} of them talking"
./target/release/examples/loadgen --connect "127.0.0.1:$as_port" --calls "$calls" \
    --duration "$seconds" --stagger-ms "$stagger_ms" --talking "${TALKING:-$calls}" \
    >"$work/loadgen.log" 2>&1 &
loadgen=$!
started=$(now_ms)
# Watchdog: /healthz every 0.5 s while the calls are up, to see whether (and when) the
# gateway's runtime stops answering anything, API requests or not.
( while kill -0 "$loadgen" 2>/dev/null; do
      echo "$(( $(now_ms) - started )) $(curl -s -o /dev/null --max-time 120 -w '%{time_total}' "$api/healthz")"
      sleep 0.5
  done ) >"$work/watchdog.log" 2>/dev/null &
watchdog=$!
since() { echo "$(( ($(now_ms) - started) / 1000 )) s"; }
n=0
while [ $(( $(now_ms) - started )) -lt 30000 ]; do
    n=$(live)
    [ "$n" != "?" ] && [ "$n" -ge "$calls" ] && break
    sleep 0.5
done
echo "live calls $n at $(since) after the first call"
if [ "$n" != "$calls" ]; then
    echo "NOT all $calls calls are up; measuring anyway, the figures below are not at $calls calls"
fi

# CPU ticks of every gateway thread, summed by thread name: "NAME TICKS" lines.
thread_ticks() {
    for stat in /proc/"$gateway"/task/*/stat; do cat "$stat" 2>/dev/null; done \
        | sed -E 's/^[0-9]+ \(([^)]*)\) /\1 /' \
        | awk '{ t[$1] += $13 + $14 } END { for (n in t) print n, t[n] }'
}
g0=$(ticks "$gateway") l0=$(ticks "$loadgen")
thread_ticks >"$work/threads0"
sleep 5
thread_ticks >"$work/threads1"
g1=$(ticks "$gateway") l1=$(ticks "$loadgen")
echo "CPU with the calls up, no API requests (5 s): gateway $(cpu_pct $((g1 - g0)) 5000)%," \
     "loadgen $(loadgen_pct $((l1 - l0)) 5000) of one core; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "    gateway threads (percent of one core):" $(awk -v hz="$hz" '
    NR == FNR { before[$1] = $2; next }
    { d = $2 - before[$1]; if (d > 0) printf "%s %d%%\n", $1, d * 100 / (5 * hz) }' \
    "$work/threads0" "$work/threads1" | sort -k2 -rn | tr '\n' ',' | sed 's/,$//')

if get "/v1/calls?limit=1000" >"$work/page.json"; then
    echo "full page: $(wc -c <"$work/page.json") bytes, total $(jq .total "$work/page.json")," \
         "$(jq '.items | length' "$work/page.json") items," \
         "$(jq '[.items[].patches | length] | add // 0' "$work/page.json") patches listed"
else
    echo "full page: no answer within 20 s"
fi

g0=$(ticks "$gateway") l0=$(ticks "$loadgen") t0=$(now_ms)
measure "$n calls"
g1=$(ticks "$gateway") l1=$(ticks "$loadgen") t1=$(now_ms)
echo "CPU while measuring ($((t1 - t0)) ms): gateway $(cpu_pct $((g1 - g0)) $((t1 - t0)))%," \
     "loadgen $(loadgen_pct $((l1 - l0)) $((t1 - t0))) of one core"
echo "live calls after measuring: $(live) (at $(since) after the first call; each lasts ${seconds} s)"

status=0
wait "$loadgen" || status=$?
loadgen=""
wait "$watchdog" || true
echo "=== /healthz watchdog while the calls were up:" \
    "$(awk '{ if ($2 > m) { m = $2; at = $1 } } END { printf "%d polls, slowest %.3f s (sent %.1f s after the first call)", NR, m, at / 1000 }' "$work/watchdog.log")"
awk '$2 > 1 { printf "    slow: sent at %.1f s, answered in %.1f s\n", $1 / 1000, $2 }' "$work/watchdog.log" | head -n 10
echo "=== loadgen (exit $status)"
grep -E "^calls |frames sent|inter-arrival|note:" "$work/loadgen.log" || true
grep -vE "^ *call +uuid|^calls |frames sent|inter-arrival|^$|calls to | ok$" "$work/loadgen.log" \
    | head -n 10 || true
# The engine's own pace over the whole run: one block per millisecond when it keeps up.
curl -sf --max-time 20 "$api/metrics" | awk -v ms=$(( $(now_ms) - gateway_t0 )) '
    /^telepatch_engine_blocks_total / { b = $2 }
    /^telepatch_engine_late_restarts_total / { r = $2 }
    /^telepatch_engine_block_seconds_sum / { s = $2 }
    /^telepatch_engine_block_seconds_count / { c = $2 }
    END { printf "=== engine: %d blocks in %d ms of gateway uptime, %d late restarts, " \
          "mean block %.0f us\n", b, ms, r, c ? s * 1e6 / c : 0 }' || true
sleep 1
kill -TERM "$gateway"
wait "$gateway" || true
gateway=""
python3 - "$work/gateway.log" <<'PY'
import re, sys
ended = underruns = gaps = 0
reasons = {}
for line in open(sys.argv[1]):
    if "call ended" in line:
        ended += 1
        underruns += int(re.search(r"downlink_underruns=(\d+)", line).group(1))
        gaps += int(re.search(r"uplink_gaps=(\d+)", line).group(1))
        m = re.search(r"reason=(.*?) duration_ms=", line)
        reason = m.group(1) if m else "?"
        reasons[reason] = reasons.get(reason, 0) + 1
print(f"=== gateway: calls ended {ended}; downlink underruns {underruns}; "
      f"uplink gaps {gaps}")
for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
    print(f"    {count} ended: {reason}")
PY
grep -E " (WARN|ERROR) " "$work/gateway.log" \
    | sed -E 's/^[^ ]+ +//; s/uuid=[^ ]+ peer=[^}]+/.../; s/[0-9]+\.[0-9]+/N/g' | sort | uniq -c \
    | sort -rn | head -n 10 || true
