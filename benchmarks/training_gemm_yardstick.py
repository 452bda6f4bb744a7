"""Yardstick for issue 17's training goal: the three products of layers 2 and 3 of the 5-point network at N = 64
faces (forward, grad_weight, grad_input), as batched matmuls over the output locations in float32 and in bfloat16
(oneDNN on AMX tiles where the CPU has them), with and without the float32 -> bfloat16 conversions as separate
passes, next to our kernels on the same shapes, all threads, medians; GFLOP/s counts 2 flops a multiply-add.

    python benchmarks/training_gemm_yardstick.py

(The matmuls leave out what our ops also do: the window gather, col2im's scatter-add, the layouts.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

import tcdcn_ext  # noqa: F401  (registers torch.ops.tcdcn_ext)

#: (N, C_in, H, k, C_out): layers 2 and 3 of the 5-point network at the training batch.
SHAPES = [(64, 16, 18, 3, 48), (64, 48, 8, 3, 64)]


def median_ms(fn: Callable[[], object], rounds: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def rows(n: int, c: int, h: int, k: int, co: int) -> tuple[float, dict[str, float]]:
    ho = h - k + 1
    locations, taps = ho * ho, c * k * k
    patches, weights, grads = torch.randn(locations, n, taps), torch.randn(locations, taps, co) * 0.1, \
        torch.randn(locations, n, co)
    pb, wb, gb = patches.bfloat16(), weights.bfloat16(), grads.bfloat16()
    x = torch.randn(n, c, h, h).contiguous(memory_format=torch.channels_last)
    w = torch.randn(ho, ho, c, k, k, co) * 0.1
    go = torch.randn(n, co, ho, ho).contiguous(memory_format=torch.channels_last)
    backward = torch.ops.tcdcn_ext._lc_conv2d_backward
    out = {
        "forward, float32 bmm": median_ms(lambda: torch.bmm(patches, weights)),
        "forward, bfloat16 bmm": median_ms(lambda: torch.bmm(pb, wb)),
        "forward, bfloat16 bmm + conversions": median_ms(lambda: torch.bmm(patches.bfloat16(),
                                                                           weights.bfloat16()).float()),
        "forward, ours": median_ms(lambda: torch.ops.tcdcn_ext.lc_conv2d(x, w, None, [1, 1], [0, 0])),
        "grad_weight, float32 bmm": median_ms(lambda: torch.bmm(patches.transpose(1, 2), grads)),
        "grad_weight, bfloat16 bmm": median_ms(lambda: torch.bmm(pb.transpose(1, 2), gb)),
        "grad_weight, bfloat16 bmm + conversions": median_ms(
            lambda: torch.bmm(patches.bfloat16().transpose(1, 2), grads.bfloat16()).float()),
        "grad_weight, ours": median_ms(lambda: backward(go, x, w, [1, 1], [0, 0], [False, True, False])),
        "grad_input, float32 bmm": median_ms(lambda: torch.bmm(grads, weights.transpose(1, 2))),
        "grad_input, bfloat16 bmm": median_ms(lambda: torch.bmm(gb, wb.transpose(1, 2))),
        "grad_input, ours": median_ms(lambda: backward(go, x, w, [1, 1], [0, 0], [True, False, False])),
    }
    return 2 * locations * n * taps * co / 1e9, out


def main() -> None:
    print(f"{torch.get_num_threads()} threads")
    for shape in SHAPES:
        gflop, out = rows(*shape)
        print(f"layer with C_in = {shape[1]}: {gflop:.3f} GFLOP per product")
        for name, ms in out.items():
            print(f"   {name:42s} {ms:7.3f} ms  {gflop / ms * 1e3:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
