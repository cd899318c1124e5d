#!/usr/bin/env bash
# The interop command: telepatch against a real Asterisk 22.10.1 (dialplan application,
# channel driver with c(), ARI externalMedia), measured as audio at both ends.
# Builds Asterisk from ../shared/peers (beside the repository) into
# TELEPATCH_ASTERISK_PREFIX (default ~/.cache/telepatch/asterisk-22.10.1) unless it is
# already installed there, then runs the interop test target. A failure fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${TELEPATCH_ASTERISK_PREFIX:-$HOME/.cache/telepatch/asterisk-22.10.1}
if [ ! -x "$prefix/sbin/asterisk" ]; then
    build=../shared/peers/build-asterisk.sh
    if [ ! -x "$build" ]; then
        echo "tests/interop.sh: $prefix/sbin/asterisk is missing and $build is not there to build it" >&2
        exit 1
    fi
    echo "tests/interop.sh: building Asterisk 22.10.1 into $prefix (a few minutes)"
    "$build" "$prefix"
fi
"$prefix/sbin/asterisk" -V
export TELEPATCH_ASTERISK_PREFIX="$prefix"

# One scenario at a time: each runs its own Asterisk and gateway against the wall clock.
# Every scenario prints what it measured; arguments go to the test binary (a name filter).
export RUST_TEST_THREADS=1
cargo test --locked -p telepatch --features interop --test interop_asterisk -- --nocapture "$@"
