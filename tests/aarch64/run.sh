#!/usr/bin/env bash
# Runs the chatglm-cpu kernel tests (NEON with and without sdot against the
# scalar reference) for aarch64 under qemu user-mode emulation, so the NEON
# kernels are checked on x86-64 machines too. On an aarch64 host the plain
# `cargo test` already runs them natively.
#
# Needs: the rust-std component for aarch64-unknown-linux-gnu (rustup), an
# aarch64 cross linker (Debian: gcc-aarch64-linux-gnu) and qemu-user. With
# INSTALL=1 it installs what is missing (rustup, apt-get as root) and skips
# with a message when that is impossible (offline); without INSTALL a missing
# tool fails the run. A failing test or clippy warning always fails it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=aarch64-unknown-linux-gnu

if [ "$(uname -m)" = aarch64 ]; then
    exec cargo test --release -p chatglm-cpu --manifest-path "$root/Cargo.toml"
fi
skip() { echo "SKIP: $*"; exit 0; }
if [ "${INSTALL:-0}" = 1 ]; then
    rustup target list --installed | grep -qx "$target" || rustup target add "$target" \
        || skip "cannot install the $target standard library with rustup"
    if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
        { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; } || skip "no root apt-get to install the cross linker and qemu-user"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null; } \
            || skip "cannot install gcc-aarch64-linux-gnu and qemu-user"
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
cargo clippy -p chatglm-cpu --all-targets --release --target "$target" --manifest-path "$root/Cargo.toml" -- -D warnings
