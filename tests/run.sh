#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs every
# unit, integration and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use (Debian). Installed only when missing.
packages=()
command -v cc >/dev/null || packages+=(build-essential)
command -v pkg-config >/dev/null || packages+=(pkg-config)
# Reference libopus: tests prove our Opus packets decode with it.
pkg-config --exists opus 2>/dev/null || packages+=(libopus-dev)
# Third-party tools the end-to-end tests check our bytes against: ffmpeg (AES67/SAP
# receive), GStreamer (AES67 send), linuxptp (PTP grandmaster), dig (DNS broadcasts),
# iproute2 (network namespaces for the PTP test).
command -v ffmpeg >/dev/null || packages+=(ffmpeg)
command -v gst-launch-1.0 >/dev/null || packages+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good)
command -v ptp4l >/dev/null || packages+=(linuxptp)
command -v dig >/dev/null || packages+=(dnsutils)
command -v ip >/dev/null || packages+=(iproute2)
command -v unshare >/dev/null || packages+=(util-linux)
# python3 holds a file lease where a test needs a file that cannot be opened yet.
command -v python3 >/dev/null || packages+=(python3)
# mount: the full-disk test mounts a small tmpfs in a private mount namespace; ffprobe
# (ffmpeg, above) reads the recordings it leaves.
command -v mount >/dev/null || packages+=(mount)
if ((${#packages[@]})); then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"
fi

# PostgreSQL on 127.0.0.1:5432 with trust auth and a database `test`: the store suite
# runs against it as well as SQLite. Machines of this kind have it running; otherwise
# install and start Debian's, configured for local trust.
pg_url=${TELEPATCH_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
if [ -z "${TELEPATCH_TEST_POSTGRES_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql
        hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n 1)
        $SUDO sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(local\s+all\s+all\s+)\S+/\1trust/' "$hba"
    fi
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    psql "postgres://postgres@127.0.0.1:5432/postgres" -qc "CREATE DATABASE test" 2>/dev/null || true
fi
export TELEPATCH_TEST_POSTGRES_URL="$pg_url"

# Every test runs once: a test that fails fails the run.
# One test at a time inside each test binary: most start a gateway, callers and tools
# of their own, and two such sets on a 2-core machine disturb each other's timing.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-1}
exec cargo test --workspace --locked --no-fail-fast "$@"
