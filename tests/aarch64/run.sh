#!/usr/bin/env bash
# Runs the chatglm-cpu kernel tests (NEON with and without sdot against the
# scalar reference) for aarch64 under qemu user-mode emulation, so the NEON
# kernels are checked on x86-64 machines too. On an aarch64 host the plain
# `cargo test` already runs them natively.
#
# Needs: the rust-std component for aarch64-unknown-linux-gnu (rustup), an
# aarch64 cross linker (Debian: gcc-aarch64-linux-gnu) and qemu-user. With
# INSTALL=1 it installs what is missing (apt-get as root); otherwise a
# missing tool fails the run loudly.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=aarch64-unknown-linux-gnu

if [ "$(uname -m)" = aarch64 ]; then
    exec cargo test --release -p chatglm-cpu --manifest-path "$root/Cargo.toml"
fi
if [ "${INSTALL:-0}" = 1 ]; then
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
    fi
fi
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool not found (run with INSTALL=1)"; exit 1; }
done

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# -cpu max: an Armv8.x+ core with the dot-product extension, so both the sdot
# and the smull fallback tables are tested.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release -p chatglm-cpu --target "$target" --manifest-path "$root/Cargo.toml" -- --nocapture 2>&1 \
    | tee "$log"
grep -q "tables under test: scalar, neon, neon-dotprod" "$log" || { echo "FAIL: the NEON tables were not tested"; exit 1; }
echo "aarch64 kernel tests passed (scalar, neon, neon-dotprod under qemu)"
