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
    s_abs = np.abs(qw.scales.astype(np.float64)).sum(0)     # (N, G): sum over bit-planes of |s_b|
    if sched.lut_dtype == "float16":
        per_group = amax.sum(-1) * 2.0 ** -11               # each entry off by <= |entry| * 2^-11
    else:
        per_group = int8_lookup_error(x, qw.group_size, sched)
        per_group = per_group + amax.sum(-1) * 2.0 ** -20   # table-entry float rounding
    bound = per_group @ s_abs.T                             # (M, N)
    return bound * 1.01 + float_slack * 4
