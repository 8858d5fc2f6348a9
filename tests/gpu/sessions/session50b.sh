#!/usr/bin/env bash
# Session 50's second call (after session50.sh, the same build): the remaining suites under each form — cuda (its
# new test: greedy batched decode of 17/24/32 sequences with the fold against the argmax, both readouts, every
# format) by default and under last, qmma under last and under QMMO_WIDE=1 — and a timeline of each form (critical path of the batched
# steps: where the fold and the last-sums form move time).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
D=CHATGLM_NVRTC_DEFINES
L="$D=QMMX_LAST_SUMS=1"
G=CHATGLM_GREEDY_FOLD=1
suite X=1 cuda
suite "$L" cuda
suite "$L" qmma
suite "$D=QMMO_WIDE=1" qmma
timeline counted 14 X=1
timeline last 14 "$L"
timeline fold 14 $G
