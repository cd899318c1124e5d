#!/usr/bin/env bash
# Call-path resampling against soxr (docs/BENCHMARKS.md, "Resampling (call path)"):
# converts the same raw f32 input with sox's `rate -v` (soxr, very high quality) and with
# telepatch's StreamResampler (codecs/examples/resample_file, 20 ms frames, Quality::Voice),
# for 8 <-> 48 kHz and 16 <-> 48 kHz, and prints CPU time (user + system, best of RUNS)
# per call-second, in microseconds:
#   soxr      the whole sox process converting (raw input, raw output)
#   sox I/O   the same process copying instead: half of copying the input plus half of
#             copying the output (as many samples read and written as the conversion)
#   soxr net  soxr minus its I/O: the resampling
#   ours      telepatch's conversion loop alone (the CPU time of its 20 ms process()
#             calls), and soxr net / ours
#   +1000ppm  the same loop steered by +1000 ppm (drift correction working), and the ratio
#   ours all  the whole resample_file process (reading, converting, writing)
# Then the SNR of a -6 dBFS tone at 0.85 x the caller's Nyquist (3.4 kHz at 8 kHz)
# through each, and through telepatch steered by +1000 ppm. CPU times, not wall time, so
# other work on the machine inflates them less (it still shares caches and cores).
#
# usage: examples/resample_vs_soxr.sh [SECONDS] [RUNS]     (defaults 600 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
runs=${2:-3}
if ! command -v sox >/dev/null; then
    apt-get install -y sox >/dev/null
fi
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p codecs --example resample_file
tool="$target/release/examples/resample_file"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Best (lowest) user+system CPU seconds of `runs` runs of the command.
cpu_seconds() {
    local best=""
    for _ in $(seq "$runs"); do
        local t
        /usr/bin/time -o "$work/time" -f '%U %S' "$@" >"$work/stdout"
        t=$(awk '{ print $1 + $2 }' "$work/time")
        if [[ -z $best ]] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then
            best=$t
        fi
    done
    echo "$best"
}

# sox arguments copying raw mono f32 IN at RATE Hz to OUT unchanged.
copy_args() { # RATE IN OUT
    echo -t raw -r "$1" -e floating-point -b 32 -c 1 -L "$2" \
        -t raw -e floating-point -b 32 -L "$3"
}

# Lowest time per call-second of telepatch's conversion loop alone over `runs` runs.
best_loop() { # FROM TO PPM
    for _ in $(seq "$runs"); do
        "$tool" convert "$1" "$2" "$work/in.f32" "$work/ours.f32" "$3" | awk '{ print $1 }'
    done | sort -n | head -1
}

# sox arguments converting raw mono f32 IN at FROM Hz to OUT at TO Hz with soxr VHQ.
soxr_args() { # FROM TO IN OUT
    echo -t raw -r "$1" -e floating-point -b 32 -c 1 -L "$3" \
        -t raw -e floating-point -b 32 -L "$4" rate -v "$2"
}

printf '%-14s %9s %9s %9s %9s %7s %9s %7s %9s\n' direction "soxr" "sox I/O" \
    "soxr net" "ours" ratio "+1000ppm" ratio "ours all"
for pair in "8000 48000" "48000 8000" "16000 48000" "48000 16000"; do
    read -r from to <<<"$pair"
    "$tool" generate "$from" "$seconds" "$work/in.f32"
    # shellcheck disable=SC2046 # the arguments are words without spaces
    sox_cpu=$(cpu_seconds sox $(soxr_args "$from" "$to" "$work/in.f32" "$work/sox.f32"))
    # sox's raw I/O alone: half of copying the input plus half of copying the output
    # (one reads and writes as many samples as the conversion reads, the other as many as
    # it writes).
    # shellcheck disable=SC2046
    copy_in=$(cpu_seconds sox $(copy_args "$from" "$work/in.f32" "$work/copy.f32"))
    # shellcheck disable=SC2046
    copy_out=$(cpu_seconds sox $(copy_args "$to" "$work/sox.f32" "$work/copy.f32"))
    our_cpu=$(cpu_seconds "$tool" convert "$from" "$to" "$work/in.f32" "$work/ours.f32")
    loop=$(best_loop "$from" "$to" 0)
    steered=$(best_loop "$from" "$to" 1000)
    awk -v d="$((from / 1000)) -> $((to / 1000)) kHz" -v s="$sox_cpu" -v ci="$copy_in" \
        -v co="$copy_out" -v o="$our_cpu" -v n="$seconds" -v l="$loop" -v st="$steered" \
        'BEGIN { io = (ci + co) / 2; net = (s - io) * 1e6 / n
                 printf "%-14s %9.0f %9.0f %9.0f %9.0f %6.1fx %9.0f %6.1fx %9.0f\n",
                 d, s * 1e6 / n, io * 1e6 / n, net, l, net / l, st, net / st, o * 1e6 / n }'
done

echo
printf '%-14s %10s %10s %18s\n' direction "soxr SNR" "ours SNR" "ours +1000 ppm SNR"
for pair in "8000 48000" "48000 8000" "16000 48000" "48000 16000"; do
    read -r from to <<<"$pair"
    low=$((from < to ? from : to))
    edge=$((low * 85 / 200))
    "$tool" generate "$from" 3 "$work/tone.f32" "$edge"
    # shellcheck disable=SC2046
    sox $(soxr_args "$from" "$to" "$work/tone.f32" "$work/sox.f32")
    "$tool" convert "$from" "$to" "$work/tone.f32" "$work/ours.f32" >/dev/null
    "$tool" convert "$from" "$to" "$work/tone.f32" "$work/steered.f32" 1000 >/dev/null
    printf '%-14s %10s %10s %18s\n' "$((from / 1000)) -> $((to / 1000)) kHz" \
        "$("$tool" snr "$to" "$work/sox.f32")" "$("$tool" snr "$to" "$work/ours.f32")" \
        "$("$tool" snr "$to" "$work/steered.f32")"
done
