"""An independent, literal float64 implementation of spec.md used as a test oracle.

Written from the spec text with explicit loops and no code shared with `rrattention.reference`,
so agreement between the two is evidence, not tautology.
"""

import math

import numpy as np


def offsets(policy, hq, hkv, s):
    g = hq // hkv
    if policy == "round_robin":
        return [h % s for h in range(hq)]
    if policy == "fixed":
        return [s - 1] * hq
    if policy == "group_round_robin":
        if s % g:
            return [h % s for h in range(hq)]
        return [(h % g) * (s // g) + (h // g) % (s // g) for h in range(hq)]
    raise ValueError(policy)


def block_scores(q, k, s, bk, r, exact=False):
    """q [Hq,Lq,D], k [Hkv,Lk,D] numpy; r offsets. Returns A [Hq, nbq, nbk] float64."""
    hq, lq, d = q.shape
    hkv, lk, _ = k.shape
    g, delta = hq // hkv, lk - lq
    nq, nk = math.ceil(lq / s), math.ceil(lk / s)
    nbq, nbk = math.ceil(lq / bk), math.ceil(lk / bk)
    big_r = bk // s
    out = np.zeros((hq, nbq, nbk))
    for h in range(hq):
        kk = k[h // g].astype(np.float64)
        for m in range(nq):
            t = m * s + r[h]
            if t >= lq:
                continue
            qt = q[h, t].astype(np.float64)
            z = np.full(nk, -np.inf)
            for n in range(nk):
                if n * s > t + delta:
                    continue
                acc = 0.0
                for j in range(s):
                    pos = n * s + j
                    if pos >= lk or (exact and pos > t + delta):
                        continue
                    acc += qt @ kk[pos]
                z[n] = acc / s / math.sqrt(d)
            p = np.exp(z - z.max())
            p /= p.sum()
            for n in range(nk):
                out[h, m // big_r, n // big_r] += p[n]
    return out


def select_row(row, tau, forced_first_set=None):
    """Spec §4 steps 1–3 (top_tau) or step 6 (forced_first with the given forced set), literally."""
    total = float(sum(row))
    keep = set()
    if forced_first_set is None:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        before = 0.0
        for j in order:
            if before < tau * total:
                keep.add(j)
            before += row[j]
        return keep
    running = float(sum(row[j] for j in forced_first_set))
    order = sorted((j for j in range(len(row)) if j not in forced_first_set), key=lambda j: (-row[j], j))
    for j in order:
        if running < tau * total:
            keep.add(j)
        running += row[j]
    return keep


def visible(i, j, lq, lk, bk):
    return j * bk <= min((i + 1) * bk, lq) - 1 + (lk - lq)


def attention(q, k, v, block_mask, bk, scale):
    """q [Hq,Lq,D], k,v [Hkv,Lk,D], block_mask [Hq,nbq,nbk] bool. float64 out, lse."""
    hq, lq, d = q.shape
    hkv, lk, _ = k.shape
    g, delta = hq // hkv, lk - lq
    out = np.zeros((hq, lq, v.shape[-1]))
    lse = np.full((hq, lq), -np.inf)
    for h in range(hq):
        kk, vv = k[h // g].astype(np.float64), v[h // g].astype(np.float64)
        for i in range(lq):
            keys = [j for j in range(lk) if j <= i + delta and block_mask[h, i // bk, j // bk]]
            if not keys:
                continue
            z = kk[keys] @ q[h, i].astype(np.float64) * scale
            mx = z.max()
            w = np.exp(z - mx)
            out[h, i] = w @ vv[keys] / w.sum()
            lse[h, i] = mx + math.log(w.sum())
    return out, lse
