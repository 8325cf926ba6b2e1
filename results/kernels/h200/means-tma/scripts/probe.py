"""Scratch: the estimator with its means through descriptors (new defaults) against pointer loads
(their defaults), called eagerly and replayed from a CUDA graph (no host time)."""
import sys, torch, triton
from rrattention.kernels.estimate import estimate_block_scores

def bench(fn):
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")

print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}")
print("shape L mode | eager: pointers tma | graph: pointers tma | identical")
for hq, hkv, d in ((9, 3, 64), (32, 8, 128)):
    for L in (8192, 16384, 32768, 131072):
        torch.manual_seed(0)
        q = torch.randn(1, hq, L, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, hkv, L, d, device="cuda", dtype=torch.bfloat16)
        for mode in ("fast", "exact"):
            row, outs = [], []
            for tma in (False, True):
                kw = dict(stride=8, block_size=128, head_shift="round_robin", scale=d**-0.5, precision=mode, tma=tma)
                fn = lambda: estimate_block_scores(q, k, **kw)
                outs.append(fn())
                row.append(bench(fn))
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    fn()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fn()
                row.append(bench(g.replay))
            print(f"{hq}/{hkv} D={d} L={L:6d} {mode:5s} | eager {row[0]:.3f} {row[2]:.3f} | graph {row[1]:.3f} {row[3]:.3f} | "
                  f"{torch.equal(outs[0], outs[1])}", flush=True)
