"""GPTQ error compensation (Hessian, Cholesky, dampening, act-order) with a uniform or HLQ group fit."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .hlq import hlq_fit
from .rtn import rtn_fit
from .tensor import QuantizedTensor, code_values

__all__ = ["HessianAccumulator", "gptq_quantize", "GROUP_FITS"]

GROUP_FITS = ("rtn", "hlq")  # "gptq" uses the uniform (rtn) fit per group, "hlq-gptq" the HLQ fit
_MAX_DAMP_RETRIES = 6
_FIT_THREADS = min(4, os.cpu_count() or 1)
_FIT_MIN_ELEMS = 1 << 14  # below this a group's HLQ fit stays on one thread


class HessianAccumulator:
    """Running H = 2/n * sum_t x_t x_t^T over the rows of calibration inputs x (..., K), in float32."""

    def __init__(self, k: int):
        self.k = int(k)
        self.H = torch.zeros(self.k, self.k, dtype=torch.float32)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        if x.shape[1] != self.k:
            raise ValueError(f"x: expected last dimension {self.k}, got {x.shape[1]}")
        m = x.shape[0]
        if m == 0:
            return
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        x = x * math.sqrt(2.0 / self.n)
        self.H.addmm_(x.T, x)


def _inverse_cholesky(H: torch.Tensor, damp: float):
    """Upper Cholesky factor of H^-1 after dampening H += damp * mean(diag H) * I.

    If the factorization fails (H numerically indefinite), dampening grows tenfold per try.
    Returns (factor, damp actually used).
    """
    k = H.shape[0]
    mean_diag = float(torch.diagonal(H).mean())
    if not math.isfinite(mean_diag):
        raise ValueError("Hessian has non-finite entries (NaN/inf calibration activations?)")
    d = damp
    for _ in range(_MAX_DAMP_RETRIES):
        Hd = H.clone()
        Hd.diagonal().add_(d * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            # H^-1 = L^-T L^-1; cholesky_inverse (LAPACK potri) is 10-30x slower on CPU here
            Linv = torch.linalg.solve_triangular(L, torch.eye(k, dtype=L.dtype), upper=False)
            Hinv = Linv.T @ Linv
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0 and torch.isfinite(U).all():
                return U, d
        d = d * 10 if d > 0 else 1e-6
    raise ValueError(f"Hessian ({k}x{k}) is not positive definite even with dampening {d / 10:g} "
                     "x mean(diag); check the calibration activations")


def _fit_group(wg: np.ndarray, bits: int, group_size: int, fit: str, rounds: int):
    """Group parameters of (N, width) float32 weights: scales fp16 (bits, N, G), zeros fp16 (N, G).

    The HLQ fit is independent per row; a single group's rows are split across threads
    (hlq_fit itself only threads over chunks of far more rows than one group of a layer has).
    """
    if fit == "rtn":
        _, s, z = rtn_fit(wg, bits, group_size)
        return s, z
    n = wg.shape[0]
    parts = min(_FIT_THREADS, max(1, wg.size // _FIT_MIN_ELEMS))
    if parts == 1:
        _, s, z = hlq_fit(wg, bits, group_size, rounds)
        return s, z
    bounds = np.linspace(0, n, parts + 1).astype(int)
    with ThreadPoolExecutor(parts) as pool:
        outs = list(pool.map(lambda r: hlq_fit(np.ascontiguousarray(wg[r[0]:r[1]]), bits, group_size, rounds),
                             zip(bounds[:-1], bounds[1:])))
    return np.concatenate([o[1] for o in outs], axis=1), np.concatenate([o[2] for o in outs], axis=0)


def gptq_quantize(w, H, bits: int, group_size: int = 128, fit: str = "hlq", damp: float = 0.01,
                  act_order: bool = False, block_size: int = 128, rounds: int = 15):
    """GPTQ of an (N, K) weight matrix given the (K, K) input Hessian H; returns (QuantizedTensor, info).

    fit="rtn": uniform min/max parameters per group (method "gptq"); fit="hlq": the ELUTQ
    HLQ fit per group (method "hlq-gptq"). Without act-order each group's parameters are fit
    when GPTQ reaches it, on the error-compensated weights. With act-order, columns are taken
    in decreasing diag(H) order; because the format's groups are contiguous in K, the group
    parameters are then fit once up front ("static groups") and GPTQ chooses the codes.
    Dead inputs (diag(H) == 0) get H_ii = 1 and weight 0. info: loss (GPTQ objective), damp used.
    """
    if fit not in GROUP_FITS:
        raise ValueError(f"fit: expected one of {GROUP_FITS}, got {fit!r}")
    if not 1 <= int(bits) <= 4:
        raise ValueError(f"bits: expected an int in 1..4, got {bits!r}")
    W = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w)
    W = W.detach().to(torch.float32).clone()
    if W.ndim != 2:
        raise ValueError(f"w: expected a 2-D (N, K) matrix, got shape {tuple(W.shape)}")
    n, k = W.shape
    H = torch.as_tensor(H).detach().to(torch.float32).clone()
    if H.shape != (k, k):
        raise ValueError(f"H: expected shape ({k}, {k}) for w of shape ({n}, {k}), got {tuple(H.shape)}")
    if not torch.isfinite(W).all():
        raise ValueError("w: expected finite values")
    method = "gptq" if fit == "rtn" else "hlq-gptq"

    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else None
    if perm is not None:
        H = H[perm][:, perm]
    U, used_damp = _inverse_cholesky(H, damp)

    g = math.ceil(k / group_size)
    scales = np.empty((bits, n, g), np.float16)
    zeros = np.empty((n, g), np.float16)
    if perm is not None:  # static groups: parameters from the (dead-zeroed) original weights
        scales[...], zeros[...] = _fit_group(W.numpy(), bits, group_size, fit, rounds)
        values = torch.from_numpy(np.ascontiguousarray(
            np.moveaxis(code_values(scales, zeros), 1, 0)))  # (G, N, C)
        W = W[:, perm]
        col_group = (perm // group_size).tolist()
    Wt = W.T.contiguous()  # (K, N): column i of W is the contiguous row Wt[i]
    del W
    codes_t = torch.empty((k, n), dtype=torch.uint8)
    loss = torch.zeros((), dtype=torch.float64)

    # Blocks: without act-order they never straddle a group, so a group's fit sees every
    # earlier column's compensation; with act-order plain blocks of block_size.
    if perm is None:
        starts = [(g0, b0, min(b0 + block_size, g0 + group_size, k))
                  for g0 in range(0, k, group_size) for b0 in range(g0, min(g0 + group_size, k), block_size)]
    else:
        starts = [(None, b0, min(b0 + block_size, k)) for b0 in range(0, k, block_size)]
    V = None
    for g0, b0, b1 in starts:
        if g0 is not None and b0 == g0:
            g1 = min(g0 + group_size, k)
            s, z = _fit_group(np.ascontiguousarray(Wt[g0:g1].T.numpy()), bits, group_size, fit, rounds)
            scales[:, :, g0 // group_size], zeros[:, g0 // group_size] = s[:, :, 0], z[:, 0]
            V = torch.from_numpy(code_values(s[:, :, 0], z[:, 0]))  # (N, C)
        W1 = Wt[b0:b1]
        Hinv1 = U[b0:b1, b0:b1]
        Err1 = torch.empty_like(W1)
        for i in range(b1 - b0):
            if perm is not None:
                V = values[col_group[b0 + i]]
            w = W1[i]
            code = torch.argmin((w[:, None] - V).abs_(), dim=1)
            q = V.gather(1, code[:, None])[:, 0]
            codes_t[b0 + i] = code.to(torch.uint8)
            d = Hinv1[i, i]
            err = (w - q) / d
            loss += err.square().sum().double() / 2
            W1[i:].addmm_(Hinv1[i, i:, None], err[None], alpha=-1.0)  # addmm: far faster than addr
            Err1[i] = err
        if b1 < k:
            Wt[b1:].addmm_(U[b0:b1, b1:].T, Err1, alpha=-1.0)
    if perm is not None:
        inv = torch.argsort(perm)
        codes_t = codes_t[inv]
    codes = np.ascontiguousarray(codes_t.T.numpy())
    qt = QuantizedTensor(bits=int(bits), group_size=int(group_size), shape=(int(n), int(k)),
                         codes=codes, scales=scales, zeros=zeros, method=method)
    return qt, {"loss": float(loss), "damp": used_damp}
