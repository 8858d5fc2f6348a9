#!/usr/bin/env bash
# Builds the Marlin peer harness (bench/marlin/harness.cu) for a GPU machine:
#
#   MARLIN_SRC=/path/to/IST-DASLab/marlin bench/marlin/build.sh [OUT]
#
# MARLIN_SRC: a checkout of IST-DASLab's marlin (its marlin/marlin_cuda_kernel.cu is compiled into the
# harness from there; nothing of it enters this repository). NVCC: the CUDA compiler (default: nvcc on
# PATH, else the nvidia-cuda-nvcc wheel in a venv at /tmp/nv). OUT: the binary (default
# device-bin/marlin_peer, git-ignored, so it can travel to the GPU machine). Run it there with the CUDA
# libraries on LD_LIBRARY_PATH: `device-bin/marlin_peer [TOKENS...]` (default 1 8 16 32).
set -euo pipefail
cd "$(dirname "$0")/../.."
src=${MARLIN_SRC:?set MARLIN_SRC to a checkout of IST-DASLab/marlin}
kernel=$src/marlin/marlin_cuda_kernel.cu
[ -f "$kernel" ] || { echo "error: $kernel not found" >&2; exit 1; }
nvcc=${NVCC:-$(command -v nvcc || ls /tmp/nv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1)}
[ -n "$nvcc" ] && [ -x "$nvcc" ] || { echo "error: no nvcc (set NVCC)" >&2; exit 1; }
out=${1:-device-bin/marlin_peer}
mkdir -p "$(dirname "$out")"
# CUDA 13's ptxas drops Marlin's `createpolicy` for the weights' evict-first copies on sm_90 and leaves the
# copies reading an undefined descriptor register: an illegal-instruction trap at run time (marlin issue 44;
# our first H200 run, session 37 — a policy made by a separate asm statement is dropped the same way). Built
# from a copy whose weight copies carry no cache hint (plain cp.async.cg, the fix that issue names); the SASS is
# checked for copies through a descriptor nothing defines.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$kernel" "$work/marlin_cuda_kernel.cu" <<'PY'
import sys
src = open(sys.argv[1]).read()
old = """    "{\\n"
    "   .reg .b64 p;\\n"
    "   createpolicy.fractional.L2::evict_first.b64 p, 1.0;"
    "   cp.async.cg.shared.global.L2::cache_hint [%0], [%1], %2, p;\\n"
    "}\\n" :: "r"(smem), "l"(glob_ptr), "n"(BYTES)
  );"""
new = """    "cp.async.cg.shared.global [%0], [%1], %2;\\n" :: "r"(smem), "l"(glob_ptr), "n"(BYTES)
  );"""
if old not in src:
    sys.exit("error: Marlin's cp_async4_stream is not the form this patch knows")
src = src.replace(old, new)
open(sys.argv[2], "w").write(src)
PY
kernel=$work/marlin_cuda_kernel.cu
"$nvcc" -O3 -std=c++17 -arch=sm_90 -lineinfo --expt-relaxed-constexpr -DMARLIN_KERNEL="\"$(cd "$(dirname "$kernel")" && pwd)/$(basename "$kernel")\"" \
  -L"$(dirname "$nvcc")/../lib" bench/marlin/harness.cu -o "$out"
dis=${CUOBJDUMP:-$(command -v cuobjdump || ls /tmp/dis/nvidia/cu13/bin/cuobjdump 2>/dev/null | head -1)}
if [ -n "$dis" ] && [ -x "$dis" ]; then
  "$dis" -sass "$out" | python3 -c '
import re, sys
bad = 0
for fn in sys.stdin.read().split("Function : ")[1:]:
    used = set(re.findall(r"LDGSTS[^;]*desc\[(UR\d+)\]", fn))
    defined = set(re.findall(r"\b(?:ULDC|UMOV|ULOP3|UIADD3|R2UR|S2UR|ULEA)[.\w]* (UR\d+)", fn))
    missing = used - defined
    if missing:
        bad += 1
        print("undefined descriptor", sorted(missing), "in", fn.split()[0][:60])
sys.exit(1 if bad else 0)
' || { echo "error: $out copies through undefined descriptors" >&2; exit 1; }
fi
echo "built $out"
