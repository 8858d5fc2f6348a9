#!/usr/bin/env bash
# Session 45's fourth call: ncu of the 32-sequence f16 products in decode steps — the qmmx module's QKV, residual and
# SwiGLU kernels and the q8_0 output layer (qmmh_2_4_0) — with caches kept between launches as in a step
# (STALL_CACHE=none) and flushed: is the L2 the common bound (run 305's h→4h and output layer both move ~3.7-3.8 TB/s
# of weights and activations through it)?
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
BIN=device-bin
. tests/gpu/device_env.sh
. tests/gpu/bench_fns.sh
session_start
sha1sum /tmp/chatglm-kernels/qmma-*.cubin /tmp/chatglm-kernels/qmmx-*.cubin
STALL_CACHE=none STALL_COUNT=6 STALL_KERNELS="qmmx_0_4_;qmmh_2_4_0" tests/gpu/stall_profile.sh "$R/none"
STALL_COUNT=3 STALL_KERNELS="qmmx_0_4_2;qmmh_2_4_0" tests/gpu/stall_profile.sh "$R/flushed"
