"""Scratch: the estimator's stride means through descriptors (TMA) against pointer loads, per launch config."""
import sys, torch, triton
sys.path.insert(0, "tools")
from rrattention.kernels.estimate import estimate_block_scores

def bench(fn):
    return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")

SHAPES = {"d128": (32, 8, 128), "d64": (9, 3, 64)}
CONFIGS = {
    ("d128", "fast"): [None, (128, 128, 4, 2, 2), (128, 128, 8, 2, 1), (128, 128, 8, 3, 1), (256, 128, 8, 2, 1), (128, 64, 4, 2, 2), (128, 64, 4, 3, 2)],
    ("d128", "exact"): [None, (256, 128, 8, 1, 1), (256, 128, 8, 3, 1), (128, 128, 4, 1, 2), (128, 128, 4, 2, 2), (128, 128, 8, 2, 1), (256, 64, 8, 2, 1), (256, 64, 8, 3, 1)],
    ("d64", "fast"): [None, (64, 128, 4, 3, 2), (128, 128, 4, 2, 2), (128, 128, 8, 2, 1), (64, 64, 4, 2, 2)],
    ("d64", "exact"): [None, (64, 128, 4, 3, 2), (128, 128, 4, 2, 2), (128, 128, 8, 2, 1), (64, 64, 4, 2, 2)],
}
lengths = [int(x) for x in sys.argv[1].split(",")]
shapes = sys.argv[2].split(",")
print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}")
for L in lengths:
    for shape in shapes:
        hq, hkv, d = SHAPES[shape]
        torch.manual_seed(0)
        q = torch.randn(1, hq, L, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, hkv, L, d, device="cuda", dtype=torch.bfloat16)
        for mode in ("fast", "exact"):
            for c in CONFIGS[(shape, mode)]:
                cfg = None if c is None else dict(zip(("ROWS", "BLOCK_N", "num_warps", "num_stages", "PROGRAMS_PER_SM"), c))
                kw = dict(stride=8, block_size=128, head_shift="round_robin", scale=d**-0.5, precision=mode, config=cfg)
                row = []
                outs = []
                for tma in (False, True):
                    try:
                        outs.append(estimate_block_scores(q, k, tma=tma, **kw))
                        row.append(bench(lambda: estimate_block_scores(q, k, tma=tma, **kw)))
                    except Exception as err:
                        outs.append(None)
                        row.append(float("nan"))
                        print("   ", type(err).__name__, str(err)[:100])
                same = outs[0] is not None and outs[1] is not None and torch.equal(outs[0], outs[1])
                print(f"L={L:6d} {shape} {mode:5s} {str(c or 'default'):24s} pointers {row[0]:7.3f}  tma {row[1]:7.3f}  "
                      f"ratio {row[1] / row[0]:.3f}  identical {same}", flush=True)
