#!/usr/bin/env bash
# Session 24: the pair products against the wide ones (suites, qmma_bench, 32 int4 sequences), one device call.
BIN=device-bin; . tests/gpu/device_env.sh; export CHATGLM_TESTDATA=$PWD/testdata CHATGLM_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for t in qmma cuda cuda_generate chatglm_cuda-lib; do s=$(date +%s); timeout 200 $BIN/tests/$t --test-threads=1 > $OUT/t-$t.log 2>&1; echo "$t rc=$? $(( $(date +%s)-s ))s $(grep -E '^test result' $OUT/t-$t.log | tail -1)"; grep -E "FAILED|panicked|failures|relative error" $OUT/t-$t.log | head -8; done
timeout 120 $BIN/qmma_bench > $OUT/qb.txt 2>&1; grep -E " 32 " $OUT/qb.txt
CHATGLM_QMM_PAIRS=14000 timeout 60 $BIN/qmma_bench 2>&1 | grep -E "4h_to_h.* 32 "
B="$BIN/chatglm bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 --gen-len 256 --concurrency 32"
for p in 0 4096 14000 4096 0; do for a in q8 batched; do s=$(date +%s); echo "pairs=$p $a $(CHATGLM_QMM_PAIRS=$p CHATGLM_GPU_ACTIVATIONS=$a timeout 60 $B 2>&1 | grep '^batch') $(( $(date +%s)-s ))s"; done; done
