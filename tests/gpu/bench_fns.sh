# Sourced by the session scripts (from the repository root, BIN set, after device_env.sh): one benchmark figure
# each, under the environment assignments given as arguments (none: the defaults).
#   b1 [VAR=value...]   batch-1 decode tok/s of DTYPE (default q4_0): prompt 8, 128 new tokens, best of 2
#   bn [VAR=value...]   aggregate tok/s of N (default 32) int4 sequences: prompt 128, 256 new tokens each
b1() {
  env "$@" timeout 90 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype "${DTYPE:-q4_0}" \
    --prompt-len 8 --gen-len 128 --repeat 2 2>&1 | grep -E '^decode  ' | sed -E 's/.*\(([0-9.]+) tok\/s.*/\1/'
}
bn() {
  env "$@" timeout 120 "$BIN/chatglm" bench --device cuda --synthetic chatglm2-6b --dtype q4_0 --prompt-len 128 \
    --gen-len 256 --concurrency "${N:-32}" 2>&1 | grep -E '^batch ' | sed -E 's/.* ([0-9]+) tok\/s.*/\1/'
}
