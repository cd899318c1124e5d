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

cargo test --workspace --locked "$@"
