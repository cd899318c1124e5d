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

cargo test --workspace --locked "$@"
