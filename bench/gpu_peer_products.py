#!/usr/bin/env python3
"""PyTorch's products on ChatGLM2-6B's shapes, as the same-run baseline for `qmma_bench`.

For 1, 8 and 32 tokens: cuBLAS f16 (`x @ w.T`) and PyTorch's int4 weight-only kernel
(`torch._weight_int4pack_mm`, groups of 32 as q4_0's blocks), each over 4 weight copies in
rotation so L2 cannot hold them, timed with CUDA events. Prints µs a call and the weight
bytes streamed a second, in `qmma_bench`'s columns. Runs on the GPU machine (PyTorch with
CUDA): `python3 bench/gpu_peer_products.py`.
"""

import sys

import torch

SHAPES = [
    ("qkv", 4608, 4096),
    ("dense", 4096, 4096),
    ("h_to_4h", 27392, 4096),
    ("4h_to_h", 4096, 13696),
    ("logits", 65024, 4096),
]
COPIES = 4
REPS = 64


def timed(call):
    for i in range(8):
        call(i)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(REPS):
        call(i)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / REPS


def int4_weights(rows, cols, group):
    """PyTorch's packed int4 weights and (scale, zero) pairs for one copy, or None where this
    version's packing API differs from both known forms."""
    q = torch.randint(0, 16, (rows, cols), dtype=torch.int32, device="cuda")
    scales = torch.full((cols // group, rows, 2), 0.01, dtype=torch.bfloat16, device="cuda")
    scales[..., 1] = 0
    for packed_input in (q, (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)):
        try:
            return torch.ops.aten._convert_weight_to_int4pack(packed_input, 8), scales
        except (RuntimeError, TypeError):
            continue
    return None


def main():
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    print(f"{'kernel':10} {'matrix':10} {'tokens':>6} {'us/call':>10} {'TB/s':>9}")
    for name, rows, cols in SHAPES:
        f16 = [torch.randn(rows, cols, dtype=torch.float16, device="cuda") * 0.02 for _ in range(COPIES)]
        int4 = [int4_weights(rows, cols, 32) for _ in range(COPIES)]
        for n in (1, 8, 32):
            x = torch.randn(n, cols, dtype=torch.float16, device="cuda")
            us = timed(lambda i: x @ f16[i % COPIES].T)
            print(f"{'cublas_f16':10} {name:10} {n:>6} {us:10.2f} {rows * cols * 2 / us / 1e6:9.3f}")
            if int4[0] is None:
                continue
            xb = x.to(torch.bfloat16)
            try:
                us = timed(lambda i: torch.ops.aten._weight_int4pack_mm(xb, int4[i % COPIES][0], 32, int4[i % COPIES][1]))
            except RuntimeError as e:
                print(f"int4pack   {name:10} {n:>6} unavailable: {str(e).splitlines()[0]}")
                continue
            print(f"{'int4pack':10} {name:10} {n:>6} {us:10.2f} {rows * cols / 2 / us / 1e6:9.3f}")
        del f16, int4
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
