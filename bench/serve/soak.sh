#!/usr/bin/env bash
# Long fault-and-load soak of `chatglm serve` (the tiny dev model, loopback):
# the test tests/serve_fault_and_load.rs of chatglm-cli, sized up. Prints the
# tally and the server's resident memory before and after.
#
#   bench/serve/soak.sh [requests per wave, default 100000] [concurrent clients, default 400]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CHATGLM_SOAK_REQUESTS=${1:-100000} CHATGLM_SOAK_CLIENTS=${2:-400}
ulimit -n 8192 2>/dev/null || true
cargo test --release -p chatglm-cli --test serve_fault_and_load -- --nocapture 2>&1 | grep -E "requests \(|test result|panicked|client [0-9]+:"
