#!/usr/bin/env bash
# Session 48's sixth call: the bus probe (tests/gpu/bus_probe.cu) with steps of 32 different rows of which the first
# k miss the cache (k = 0, 1, 2, 3, 4, 8, 32): what a real-text step's few missing rows cost over an all-hit step.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
/usr/local/cuda/bin/nvcc -O3 -arch=sm_90 tests/gpu/bus_probe.cu -o /tmp/bus_probe && timeout 120 /tmp/bus_probe
