import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_qkv(batch=1, q_heads=2, kv_heads=1, q_len=256, k_len=None, dim=32, dtype=torch.float32, seed=0, device="cpu"):
    """Random q [B,Hq,Lq,D], k, v [B,Hkv,Lk,D]; q/k scaled so attention is peaked, not uniform."""
    k_len = q_len if k_len is None else k_len
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, q_len, dim, generator=g) * 1.5
    k = torch.randn(batch, kv_heads, k_len, dim, generator=g) * 1.5
    v = torch.randn(batch, kv_heads, k_len, dim, generator=g)
    return tuple(x.to(device=device, dtype=dtype) for x in (q, k, v))
