"""Frozen reference implementations of quant's former HLQ statistics and GPTQ inner loop (before the
speed-up of issue 14), for equivalence tests. Deliberately the plain, slow algorithms:
- HLQ round statistics by bincount over every weight's nearest-code rank (quant.hlq now uses sorted
  groups, prefix sums and a binary search);
- the inverse Hessian's upper Cholesky factor as chol(L^-T L^-1) (quant.gptq now flips H);
- nearest codes by argmin over an (N, C) array (quant.gptq now reduces over the outer axis).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from quant.gptq import _fit_group
from quant.hlq import _group_sq_err
from quant.rtn import group_view, rtn_fit
from quant.tensor import QuantizedTensor, bitplanes, code_values

_RIDGE = 1e-4


def _nearest_ranks(wg, values):
    order = np.argsort(values, axis=-1, kind="stable")
    vs = np.take_along_axis(values, order, axis=-1)
    mid = (vs[..., 1:] + vs[..., :-1]) * np.float32(0.5)
    rank = np.zeros(wg.shape, dtype=np.uint8)
    for j in range(mid.shape[-1]):
        rank += wg > mid[..., j:j + 1]
    return rank, order


def _stats(wg, valid_last, ncodes, rank, order):
    n, g, gs = wg.shape
    nbins = n * g * ncodes
    idx = (np.arange(n * g, dtype=np.intp) * ncodes).reshape(n, g, 1) + rank
    idx[:, -1, valid_last:] = nbins
    idx = idx.reshape(-1)
    cnt = np.bincount(idx, minlength=nbins + 1)[:nbins].reshape(n, g, ncodes).astype(np.float64)
    sw = np.bincount(idx, weights=wg.reshape(-1).astype(np.float64), minlength=nbins + 1)[:nbins]
    sw = sw.reshape(n, g, ncodes)
    if order is not None:
        out_cnt, out_sw = np.empty_like(cnt), np.empty_like(sw)
        np.put_along_axis(out_cnt, order, cnt, axis=-1)
        np.put_along_axis(out_sw, order, sw, axis=-1)
        cnt, sw = out_cnt, out_sw
    return cnt, sw


def _params_fp16(params):
    p16 = params.astype(np.float16)
    return np.ascontiguousarray(np.moveaxis(p16[..., :-1], -1, 0)), np.ascontiguousarray(p16[..., -1])


def hlq_reference(w, bits, group_size, rounds=15):
    """The former HLQ fit of float32 w (N, K): (codes, scales fp16 (bits, N, G), zeros fp16 (N, G))."""
    n, k = w.shape
    ncodes = 1 << bits
    rtn_codes, rtn_s, rtn_z = rtn_fit(w, bits, group_size)
    wg = group_view(w, group_size, mode="zero")
    g = wg.shape[1]
    valid_last = k - (g - 1) * group_size
    sumw2 = np.einsum("ngk,ngk->ng", wg, wg, dtype=np.float64)
    design = np.concatenate([bitplanes(np.arange(ncodes), bits).T, np.ones((ncodes, 1), np.uint8)], 1)
    design = design.astype(np.float64)
    outer = np.einsum("ci,cj->cij", design, design).reshape(ncodes, -1)
    eye = np.eye(bits + 1) * _RIDGE

    def error(params, rank, order):
        cnt, sw = _stats(wg, valid_last, ncodes, rank, order)
        v = code_values(*_params_fp16(params)).astype(np.float64)
        return sumw2 - 2.0 * np.einsum("ngc,ngc->ng", v, sw) + np.einsum("ngc,ngc->ng", cnt, v * v), cnt, sw

    params = np.concatenate([np.moveaxis(rtn_s, 0, -1), rtn_z[..., None]], -1).astype(np.float64)
    rank, order = group_view(rtn_codes, group_size, mode="zero"), None
    best_params, best_err = params, None
    for _ in range(rounds):
        err, cnt, sw = error(params, rank, order)
        if best_err is None:
            best_err = err
        else:
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_params = np.where(better[..., None], params, best_params)
        ata = (cnt @ outer).reshape(n, g, bits + 1, bits + 1) + eye
        new = np.linalg.solve(ata, (sw @ design + _RIDGE * params)[..., None])[..., 0]
        with np.errstate(over="ignore", invalid="ignore"):
            new = new.astype(np.float16).astype(np.float64)
        new = np.where(np.isfinite(new).all(-1, keepdims=True), new, params)
        if np.array_equal(new, params):
            break
        params = new
        rank, order = _nearest_ranks(wg, code_values(*_params_fp16(params)))
    else:
        err, _, _ = error(params, rank, order)
        best_params = np.where((err < best_err)[..., None], params, best_params)
    s16, z16 = _params_fp16(best_params)
    rank, order = _nearest_ranks(wg, code_values(s16, z16))
    codes = np.take_along_axis(order, rank.astype(np.intp), -1).astype(np.uint8).reshape(n, -1)[:, :k]
    hlq_err = _group_sq_err(wg, codes, s16, z16, group_size, valid_last)  # the unchanged RTN safeguard
    use_rtn = _group_sq_err(wg, rtn_codes, rtn_s, rtn_z, group_size, valid_last) <= hlq_err
    s16 = np.where(use_rtn[None], rtn_s, s16)
    z16 = np.where(use_rtn, rtn_z, z16)
    codes = np.where(np.repeat(use_rtn, group_size, axis=1)[:, :k], rtn_codes, codes)
    return np.ascontiguousarray(codes), s16, z16


def inverse_cholesky_reference(H, damp):
    """Upper U with U^T U = (H + damp * mean(diag H) * I)^-1, the former way (no retries)."""
    Hd = H.clone()
    Hd.diagonal().add_(damp * float(torch.diagonal(H).mean()))
    L = torch.linalg.cholesky(Hd)
    Linv = torch.linalg.solve_triangular(L, torch.eye(H.shape[0], dtype=L.dtype), upper=False)
    return torch.linalg.cholesky(Linv.T @ Linv, upper=True)


def gptq_reference(w, H, bits, group_size, fit="hlq", damp=0.01, rounds=15):
    """The former GPTQ (no act-order, block = group): argmin over (N, C), U from inverse_cholesky_reference."""
    W = torch.as_tensor(w).to(torch.float32).clone()
    n, k = W.shape
    H = torch.as_tensor(H).to(torch.float32).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = inverse_cholesky_reference(H, damp)
    g = math.ceil(k / group_size)
    scales, zeros = np.empty((bits, n, g), np.float16), np.empty((n, g), np.float16)
    Wt = W.T.contiguous()
    codes_t = torch.empty((k, n), dtype=torch.uint8)
    loss = 0.0
    for b0 in range(0, k, group_size):
        b1 = min(b0 + group_size, k)
        s, z = _fit_group(np.ascontiguousarray(Wt[b0:b1].T.numpy()), bits, group_size, fit, rounds)
        scales[:, :, b0 // group_size], zeros[:, b0 // group_size] = s[:, :, 0], z[:, 0]
        V = torch.from_numpy(code_values(s[:, :, 0], z[:, 0]))  # (N, C)
        W1, Hinv1 = Wt[b0:b1], U[b0:b1, b0:b1]
        Err1 = torch.empty_like(W1)
        for i in range(b1 - b0):
            w_i = W1[i]
            code = torch.argmin((w_i[:, None] - V).abs_(), dim=1)
            q = V.gather(1, code[:, None])[:, 0]
            codes_t[b0 + i] = code.to(torch.uint8)
            err = (w_i - q) / Hinv1[i, i]
            loss += float(err.double().square().sum()) / 2
            W1[i:].addmm_(Hinv1[i, i:, None], err[None], alpha=-1.0)
            Err1[i] = err
        if b1 < k:
            Wt[b1:].addmm_(U[b0:b1, b1:].T, Err1, alpha=-1.0)
    return QuantizedTensor(bits=bits, group_size=group_size, shape=(n, k), codes=np.ascontiguousarray(codes_t.T.numpy()),
                           scales=scales, zeros=zeros, method="gptq" if fit == "rtn" else "hlq-gptq"), loss
