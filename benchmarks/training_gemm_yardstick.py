"""Yardstick for issue 17's training goal: the three products of layers 2 and 3 of the 5-point network at N = 64
faces (forward, grad_weight, grad_input), as batched matmuls over the output locations in float32 and in bfloat16
(oneDNN on AMX tiles where the CPU has them), with and without the float32 -> bfloat16 conversions as separate
passes, next to our kernels on the same shapes, all threads, medians; GFLOP/s counts 2 flops a multiply-add.

    python benchmarks/training_gemm_yardstick.py

(The matmuls leave out what our ops also do: the window gather, col2im's scatter-add, the layouts.)
"""
import torch, time
import tcdcn_ext  # noqa: F401  (registers torch.ops.tcdcn_ext)
def t(f, n=30):
    for _ in range(3): f()
    ts = []
    for _ in range(n):
        a = time.perf_counter(); f(); ts.append(time.perf_counter() - a)
    ts.sort(); return ts[len(ts)//2] * 1e3
B = torch.ops.tcdcn_ext._lc_conv2d_backward
for (n, c, h, k, co) in [(64, 16, 18, 3, 48), (64, 48, 8, 3, 64)]:
    ho = h - k + 1; L = ho * ho; K = c * k * k
    P = torch.randn(L, n, K); W = torch.randn(L, K, co) * 0.1; G = torch.randn(L, n, co)
    Pb, Wb, Gb = P.bfloat16(), W.bfloat16(), G.bfloat16()
    fl = 2 * L * n * K * co / 1e9
    r = {}
    r["fwd fp32 bmm"] = t(lambda: torch.bmm(P, W))
    r["fwd bf16 bmm"] = t(lambda: torch.bmm(Pb, Wb))
    r["fwd bf16 bmm+conv"] = t(lambda: torch.bmm(P.bfloat16(), W.bfloat16()).float())
    r["gw fp32 bmm"] = t(lambda: torch.bmm(P.transpose(1, 2), G))
    r["gw bf16 bmm"] = t(lambda: torch.bmm(Pb.transpose(1, 2), Gb))
    r["gw bf16 bmm+conv"] = t(lambda: torch.bmm(P.bfloat16().transpose(1, 2), G.bfloat16()).float())
    r["gi fp32 bmm"] = t(lambda: torch.bmm(G, W.transpose(1, 2)))
    r["gi bf16 bmm"] = t(lambda: torch.bmm(Gb, Wb.transpose(1, 2)))
    x = torch.randn(n, c, h, h).contiguous(memory_format=torch.channels_last)
    w = torch.randn(ho, ho, c, k, k, co) * 0.1
    go = torch.randn(n, co, ho, ho).contiguous(memory_format=torch.channels_last)
    r["ours fwd"] = t(lambda: torch.ops.tcdcn_ext.lc_conv2d(x, w, None, [1, 1], [0, 0]))
    r["ours gw"] = t(lambda: B(go, x, w, [1,1],[0,0],[False,True,False]))
    r["ours gi"] = t(lambda: B(go, x, w, [1,1],[0,0],[True,False,False]))
    print(f"layer C_in={c}: {fl:.3f} GFLOP per product")
    for kk, v in r.items(): print(f"   {kk:20s} {v:7.3f} ms  {fl / v * 1e3:6.1f} GFLOP/s")
