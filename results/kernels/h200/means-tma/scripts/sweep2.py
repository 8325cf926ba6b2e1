"""Scratch: launch configs of the estimator with its stride means through descriptors (TMA)."""
import sys, torch, triton
from rrattention.kernels.estimate import estimate_block_scores

def bench(fn):
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")

SHAPES = {"d128": (32, 8, 128), "d64": (9, 3, 64)}
CONFIGS = {
    ("d128", "fast"): [(128, 128, 4, 1, 2), (128, 128, 4, 2, 2), (64, 128, 4, 1, 3), (64, 128, 4, 2, 3), (64, 128, 4, 2, 2), (128, 64, 4, 1, 2)],
    ("d128", "exact"): [(128, 128, 4, 1, 2), (128, 64, 4, 1, 2), (128, 64, 4, 2, 2), (128, 64, 4, 3, 2), (64, 128, 4, 1, 2), (64, 64, 4, 2, 3), (128, 128, 4, 1, 1)],
    ("d64", "fast"): [(64, 128, 4, 2, 2), (128, 128, 4, 2, 2), (128, 128, 4, 1, 2), (128, 128, 4, 3, 2), (128, 64, 4, 2, 2), (64, 128, 4, 2, 3), (128, 128, 4, 2, 3)],
    ("d64", "exact"): [(64, 128, 4, 2, 2), (128, 128, 4, 2, 2), (128, 128, 4, 1, 2), (128, 128, 4, 3, 2), (128, 64, 4, 2, 2), (64, 128, 4, 2, 3), (128, 128, 4, 2, 3)],
}
lengths = [int(x) for x in sys.argv[1].split(",")]
print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}")
for shape in sys.argv[2].split(","):
    for L in lengths:
        hq, hkv, d = SHAPES[shape]
        torch.manual_seed(0)
        q = torch.randn(1, hq, L, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, hkv, L, d, device="cuda", dtype=torch.bfloat16)
        for mode in ("fast", "exact"):
            for c in CONFIGS[(shape, mode)]:
                cfg = dict(zip(("ROWS", "BLOCK_N", "num_warps", "num_stages", "PROGRAMS_PER_SM"), c))
                kw = dict(stride=8, block_size=128, head_shift="round_robin", scale=d**-0.5, precision=mode, config=cfg)
                try:
                    t = bench(lambda: estimate_block_scores(q, k, tma=True, **kw))
                except Exception as err:
                    t = float("nan")
                    print("   ", type(err).__name__, str(err)[:90])
                print(f"L={L:6d} {shape} {mode:5s} {str(c):22s} tma {t:7.3f}", flush=True)
