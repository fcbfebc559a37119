"""Numpy references for LUT-GEMM and the error bound each table precision allows."""
from __future__ import annotations

import numpy as np


def reference(x, qw):
    """y = x @ W_hat^T in float64, and sum |x| |W_hat| (the float-rounding scale), per output."""
    w = qw.dequantize().astype(np.float64)
    x64 = x.astype(np.float64)
    return x64 @ w.T, np.abs(x64) @ np.abs(w).T


def _table_amax(x, group_size, g):
    """max |subset sum| per (m, group, table) as the kernel computes it: (M, G, T)."""
    M, K = x.shape
    ng = -(-K // group_size)
    tpg = -(-group_size // g)
    xp = np.zeros((M, ng * group_size), np.float64)
    xp[:, :K] = x
    grp = np.zeros((M, ng, tpg * g))
    grp[:, :, :group_size] = xp.reshape(M, ng, group_size)
    runs = grp.reshape(M, ng, tpg, g)
    pos = np.where(runs > 0, runs, 0).sum(-1)
    neg = np.where(runs < 0, runs, 0).sum(-1)
    return np.maximum(pos, -neg)


def error_bound(x, qw, sched):
    """Largest |kernel - reference| the schedule's table precision allows, per output (M, N)."""
    _, mag = reference(x, qw)
    float_slack = 1e-5 * mag + 1e-6
    if sched.lut_dtype == "float32":
        return float_slack * 4
    amax = _table_amax(x, qw.group_size, sched.g)          # (M, G, T)
    s_abs = np.abs(qw.scales.astype(np.float64)).sum(0)     # (N, G): sum over bit-planes of |s_b|
    if sched.lut_dtype == "float16":
        per_group = amax.sum(-1) * 2.0 ** -11               # each entry off by <= |entry| * 2^-11
    else:
        scale = amax.max(-1) / 127.0                        # one scale per (m, group)
        per_group = amax.shape[-1] * scale / 2              # each lookup off by <= scale / 2
        per_group = per_group + amax.sum(-1) * 2.0 ** -20   # table-entry float rounding
    bound = per_group @ s_abs.T                             # (M, N)
    return bound * 1.01 + float_slack * 4
