"""Numpy references for LUT-GEMM and the error bound each table precision allows."""
from __future__ import annotations

import numpy as np


def reference(x, qw):
    """y = x @ W_hat^T in float64, and sum |x| |W_hat| (the float-rounding scale), per output."""
    w = qw.dequantize().astype(np.float64)
    x64 = x.astype(np.float64)
    return x64 @ w.T, np.abs(x64) @ np.abs(w).T


def _subset_sums(x, group_size, g):
    """Every table entry, by enumerating subsets: (M, G, T, 2**g) over the zero-padded groups."""
    M, K = x.shape
    ng = -(-K // group_size)
    tpg = -(-group_size // g)
    xp = np.zeros((M, ng * group_size), np.float64)
    xp[:, :K] = x
    grp = np.zeros((M, ng, tpg * g))
    grp[:, :, :group_size] = xp.reshape(M, ng, group_size)
    runs = grp.reshape(M, ng, tpg, g)
    subsets = np.array([[(i >> j) & 1 for j in range(g)] for i in range(1 << g)], np.float64)   # (2**g, g)
    return runs @ subsets.T, runs


def int8_lookup_error(x, group_size, sched):
    """(M, G): the most a group's int8 lookups can be off in total, one per table, each by half
    its block's scale. A block is sched.scale_chunks * per_byte consecutive tables (the last may
    be short); its scale is the largest |entry| of its tables / 127, entries centered by half the
    table's sum when sched.centered. With integer block ratios R (sched.scale_ratio) a block's
    scale is instead r * unit: unit = max(gmax / (127 R), sum of the block maxima / (127 B)) with
    gmax the group's largest |entry| and B = sched.ratio_budget, r the smallest integer >= block
    max / (127 unit), at most R (taken 1e-5 high against the kernel's float32 rounding)."""
    entries, runs = _subset_sums(x, group_size, sched.g)
    if sched.centered:
        entries = entries - 0.5 * runs.sum(-1, keepdims=True)
    amax = np.abs(entries).max(-1)                          # (M, G, T)
    tpb = sched.scale_chunks * sched.per_byte
    R = sched.scale_ratio
    bmax = [amax[..., t0:t0 + tpb].max(-1) for t0 in range(0, amax.shape[-1], tpb)]
    unit = np.maximum(amax.max(-1) / (127.0 * max(R, 1)), sum(bmax) / (127.0 * max(sched.ratio_budget, 1)))
    unit = np.maximum(unit, 1e-300)
    out = np.zeros(amax.shape[:2])
    for i, t0 in enumerate(range(0, amax.shape[-1], tpb)):
        scale = bmax[i] / 127.0
        if R:
            scale = np.clip(np.ceil(bmax[i] * (1 + 1e-5) / (127.0 * unit)), 1, R) * unit * (1 + 1e-6)
        out += min(tpb, amax.shape[-1] - t0) * scale / 2
    return out


def error_bound(x, qw, sched):
    """Largest |kernel - reference| the schedule's table precision allows, per output (M, N)."""
    _, mag = reference(x, qw)
    float_slack = 1e-5 * mag + 1e-6
    if sched.lut_dtype == "float32":
        return float_slack * 4
    entries, _ = _subset_sums(x, qw.group_size, sched.g)
    amax = np.abs(entries).max(-1)                          # (M, G, T)
    s_abs = np.abs(qw.scales.astype(np.float64))            # (bits, N, G)
    fine = getattr(sched, "fine_planes", 0) if sched.lut_dtype == "int8" else 0
    if fine:    # refined planes: the entry to 1/16 of the step, so 1/16 of the rounding error
        s_abs[qw.bits - fine:] /= 16.0
    s_abs = s_abs.sum(0)                                    # (N, G): sum over bit-planes of |s_b|
    if sched.lut_dtype == "float16":
        per_group = amax.sum(-1) * 2.0 ** -11               # each entry off by <= |entry| * 2^-11
    else:
        per_group = int8_lookup_error(x, qw.group_size, sched)
        per_group = per_group + amax.sum(-1) * 2.0 ** -20   # table-entry float rounding
    bound = per_group @ s_abs.T                             # (M, N)
    return bound * 1.01 + float_slack * 4


def dot_reference(x, qw, act_block, wmax, residual=False):
    """The dot path's arithmetic (lutc/kernels/dotgemm.py) in numpy: int8 activations per act_block
    (float32 scale math as the kernel does it; `residual`: plus the int8 residual), u8 weight levels from the plane scales, exact integer
    dots, float64 sums. Returns (y, sum |terms|), the second the float-rounding scale per output."""
    f32 = np.float32
    M, K = x.shape
    bits, gs, N = qw.bits, qw.group_size, qw.N
    ng = -(-K // gs)
    xp = np.zeros((M, ng * gs), f32)
    xp[:, :K] = x
    blocks = xp.reshape(M, ng * gs // act_block, act_block)
    amax = np.abs(blocks).max(-1)
    sx = amax / f32(127.0)
    safe = np.where(sx > 0, sx, f32(1.0)).astype(f32)
    q = np.round(blocks / safe[..., None])
    xq = q.astype(np.int64).reshape(M, ng * gs)
    if residual:
        q2 = np.round((blocks - q * sx[..., None]).astype(f32) / (safe * f32(1.0 / 254.0))[..., None])
        xq2 = np.clip(q2, -128, 127).astype(np.int64).reshape(M, ng * gs)
    xsum = xp.reshape(M, ng, gs).astype(np.float64).sum(-1)
    S = qw.scales.astype(f32)                                    # (bits, N, ng)
    tot, zero = np.zeros((N, ng), f32), qw.zeros.astype(f32)
    for b in range(bits):
        tot = (tot + np.abs(S[b])).astype(f32)
        zero = (zero + np.minimum(S[b], f32(0.0))).astype(f32)
    lim = f32(wmax - 0.5 * bits)
    winv = np.where(tot > 0, lim / np.where(tot > 0, tot, f32(1.0)), f32(0.0)).astype(f32)
    qf = np.round(np.abs(S) * winv).astype(f32)                  # (bits, N, ng)
    num, den = np.zeros((N, ng), f32), np.zeros((N, ng), f32)
    for b in range(bits):
        num = (num + qf[b] * np.abs(S[b])).astype(f32)
        den = (den + qf[b] * qf[b]).astype(f32)
    step = (num / np.where(den > 0, den, f32(1.0))).astype(np.float64)
    codes = np.zeros((N, ng * gs), np.int64)
    codes[:, :K] = qw.codes
    lev = np.zeros((N, ng * gs), np.int64)
    for b in range(bits):
        bit = (codes >> b) & 1
        bit = np.where(np.repeat(S[b] < 0, gs, axis=1), 1 - bit, bit)
        lev += bit * np.repeat(qf[b].astype(np.int64), gs, axis=1)
    assert lev.max(initial=0) <= wmax
    y, mag = np.zeros((M, N)), np.zeros((M, N))
    spg = gs // act_block
    for sb in range(ng * spg):
        cols = slice(sb * act_block, (sb + 1) * act_block)
        d = (xq[:, cols] @ lev[:, cols].T).astype(np.float64)
        dm = (np.abs(xq[:, cols]) @ lev[:, cols].T).astype(np.float64)
        if residual:
            d += (xq2[:, cols] @ lev[:, cols].T) / 254.0
            dm += (np.abs(xq2[:, cols]) @ lev[:, cols].T) / 254.0
        f = sx[:, sb:sb + 1].astype(np.float64) * step[None, :, sb // spg]
        y += d * f
        mag += dm * np.abs(f)
    y += xsum @ zero.astype(np.float64).T
    mag += np.abs(xp.reshape(M, ng, gs)).sum(-1) @ np.abs(zero.astype(np.float64)).T
    return y, mag
