"""GPTQ error compensation (Hessian, Cholesky, dampening, act-order) with a uniform or HLQ group fit."""

from __future__ import annotations

import contextlib
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

    def add(self, x: torch.Tensor, consume: bool = False) -> None:
        """Add the rows of x. consume=True: x (float32, contiguous) may be overwritten (scaled in
        place instead of into a copy; the same values reach H)."""
        if self.H is None:
            raise ValueError("HessianAccumulator: H was already taken")
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        if x.shape[1] != self.k:
            raise ValueError(f"x: expected last dimension {self.k}, got {x.shape[1]}")
        m = x.shape[0]
        if m == 0:
            return
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        x = x.mul_(math.sqrt(2.0 / self.n)) if consume and x.is_contiguous() else x * math.sqrt(2.0 / self.n)
        self.H.addmm_(x.T, x)

    def take(self) -> torch.Tensor:
        """H, handed over: the accumulator drops its reference (and accepts no more inputs), so
        gptq_quantize(w, acc, ...) can free the K x K matrix as soon as it has its own copy."""
        H, self.H = self.H, None
        if H is None:
            raise ValueError("HessianAccumulator: H was already taken")
        return H


def _inverse_cholesky(A: torch.Tensor, damp: float):
    """The upper Cholesky factor U of H^-1 (U^T U = H^-1), as M = flip(U), from A = flip(H) (rows and
    columns reversed), after dampening H += damp * mean(diag H) * I. A is consumed: dampened in place,
    its storage released once factored (A.set_()), so at most two K x K buffers exist at a time.

    With J the reversal, J H J = A = L L^T gives H^-1 = (J L^-1 J)^T (J L^-1 J), and J L^-1 J is
    upper triangular: U = J M J with M = L^-1. One Cholesky and one triangular solve (the former
    route, H^-1 = L^-T L^-1 and then a second Cholesky, added a K^3 product and a second
    factorization and held about eight K x K copies; at K = 11008 each is 485 MB).
    If the factorization fails (H numerically indefinite), dampening grows tenfold per try.
    Returns (M = L^-1, lower triangular; damp actually used). Read U through _u_block.
    """
    k = A.shape[0]
    mean_diag = float(torch.diagonal(A).mean())
    if not math.isfinite(mean_diag):
        raise ValueError("Hessian has non-finite entries (NaN/inf calibration activations?)")
    d, added = damp, 0.0
    for _ in range(_MAX_DAMP_RETRIES):
        A.diagonal().add_(d * mean_diag - added)
        added = d * mean_diag
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            A.set_()  # release H's copy: only L and L^-1 from here
            # L^-1 in place of the identity (LAPACK trsm works in place; tests check the result)
            M = torch.eye(k, dtype=L.dtype)
            torch.linalg.solve_triangular(L, M, upper=False, out=M)
            if torch.isfinite(M.sum()):
                return M, d
            del M
            A.set_(L @ L.T)  # rare: L^-1 overflowed; rebuild the dampened matrix and damp more
        del L
        d = d * 10 if d > 0 else 1e-6
    raise ValueError(f"Hessian ({k}x{k}) is not positive definite even with dampening {d / 10:g} "
                     "x mean(diag); check the calibration activations")


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch intra-op threads set to n inside (restored after). The per-column ops of GPTQ's inner
    loop touch one column (N floats, about 100 kB): split over threads they cost 10-500x their
    single-thread time in synchronization, measured on a loaded 2-core machine."""
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _u_block(M: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """U[r0:r1, c0:c1] of U = J M J (see _inverse_cholesky): a reversed copy of M's mirrored block."""
    k = M.shape[0]
    return torch.flip(M[k - r1:k - r0, k - c1:k - c0], (0, 1))


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
                  act_order: bool = False, block_size: int = 128, rounds: int = 15, grid=None):
    """GPTQ of an (N, K) weight matrix given the (K, K) input Hessian H; returns (QuantizedTensor, info).

    H: a tensor (not modified) or a HessianAccumulator, whose H is taken (see its take()).

    fit="rtn": uniform min/max parameters per group (method "gptq"); fit="hlq": the ELUTQ
    HLQ fit per group (method "hlq-gptq"). Without act-order each group's parameters are fit
    when GPTQ reaches it, on the error-compensated weights. With act-order, columns are taken
    in decreasing diag(H) order; because the format's groups are contiguous in K, the group
    parameters are then fit once up front ("static groups") and GPTQ chooses the codes.
    Dead inputs (diag(H) == 0) get H_ii = 1 and weight 0. info: loss (GPTQ objective), damp used.
    grid=(scales (bits, N, G), zeros (N, G)): no fit; GPTQ only chooses the codes on this fixed grid
    (hlq-ft's code re-choice, quant.rechoose); the result carries these arrays.
    """
    if fit not in GROUP_FITS:
        raise ValueError(f"fit: expected one of {GROUP_FITS}, got {fit!r}")
    if not 1 <= int(bits) <= 4:
        raise ValueError(f"bits: expected an int in 1..4, got {bits!r}")
    W = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w)
    W = W.detach()
    if W.ndim != 2:
        raise ValueError(f"w: expected a 2-D (N, K) matrix, got shape {tuple(W.shape)}")
    n, k = W.shape
    if isinstance(H, HessianAccumulator):
        H = H.take()
    H = torch.as_tensor(H).detach()
    if H.shape != (k, k):
        raise ValueError(f"H: expected shape ({k}, {k}) for w of shape ({n}, {k}), got {tuple(H.shape)}")
    method = "gptq" if fit == "rtn" else "hlq-gptq"

    dead = torch.diagonal(H) == 0
    Wt = W.to(torch.float32).T.contiguous()  # (K, N), a copy: column i of W is the contiguous row Wt[i]
    del W
    if not np.isfinite(Wt.numpy()).all():  # numpy: one thread, no intra-op sync (see _torch_threads)
        raise ValueError("w: expected finite values")
    Wt[dead] = 0.0
    perm = torch.argsort(torch.diagonal(H).masked_fill(dead, 1.0), descending=True) if act_order else None
    # A = flip(H[perm][:, perm]) in float32: the one K x K copy GPTQ keeps of H (see _inverse_cholesky)
    if perm is None:
        A = torch.flip(H.to(torch.float32), (0, 1))
    else:
        rev = perm.flip(0)
        A = H[rev[:, None], rev[None, :]].to(torch.float32)
    del H  # the caller's H (or a consumed HessianAccumulator's) is no longer needed here
    A.diagonal()[torch.diagonal(A) == 0] = 1.0  # dead inputs: H_ii = 1
    M, used_damp = _inverse_cholesky(A, damp)
    del A

    g = math.ceil(k / group_size)
    if grid is not None:
        scales, zeros = grid
        if scales.shape != (bits, n, g) or zeros.shape != (n, g):
            raise ValueError(f"grid: expected scales {(bits, n, g)} and zeros {(n, g)}, "
                             f"got {scales.shape} and {zeros.shape}")
    else:
        scales = np.empty((bits, n, g), np.float16)
        zeros = np.empty((n, g), np.float16)
    values = None
    if perm is not None and grid is None:  # static groups: parameters from the (dead-zeroed) original weights
        scales[...], zeros[...] = _fit_group(np.ascontiguousarray(Wt.T.numpy()), bits, group_size, fit, rounds)
    if perm is not None or grid is not None:
        values = torch.from_numpy(np.ascontiguousarray(
            code_values(scales, zeros).transpose(1, 2, 0)))  # (G, C, N)
    if perm is not None:
        Wt = Wt[perm]
        col_group = (perm // group_size).tolist()
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
        if g0 is not None and b0 == g0 and values is not None:
            V = values[g0 // group_size]
        elif g0 is not None and b0 == g0:
            g1 = min(g0 + group_size, k)
            s, z = _fit_group(np.ascontiguousarray(Wt[g0:g1].T.numpy()), bits, group_size, fit, rounds)
            scales[:, :, g0 // group_size], zeros[:, g0 // group_size] = s[:, :, 0], z[:, 0]
            V = torch.from_numpy(np.ascontiguousarray(code_values(s[:, :, 0], z[:, 0]).T))  # (C, N)
        W1 = Wt[b0:b1]
        Hinv1 = _u_block(M, b0, b1, b0, b1)
        Err1 = torch.empty_like(W1)
        with _torch_threads(1):
            for i in range(b1 - b0):
                if perm is not None:
                    V = values[col_group[b0 + i]]
                w = W1[i]
                # nearest code: min over the outer axis of (C, N) (an argmin over a size-C inner axis
                # was several times slower); the first minimum's index, as argmin gives
                code = (w[None] - V).abs_().min(0)[1]
                q = V.gather(0, code[None])[0]
                codes_t[b0 + i] = code.to(torch.uint8)
                err = (w - q) / Hinv1[i, i]
                loss += err.square().sum().double() / 2
                W1[i + 1:].addmm_(Hinv1[i, i + 1:, None], err[None], alpha=-1.0)  # addmm: far faster than addr
                Err1[i] = err
        if b1 < k:
            Wt[b1:].addmm_(_u_block(M, b0, b1, b1, k).T, Err1, alpha=-1.0)
    if perm is not None:
        inv = torch.argsort(perm)
        codes_t = codes_t[inv]
    codes = np.ascontiguousarray(codes_t.T.numpy())
    qt = QuantizedTensor(bits=int(bits), group_size=int(group_size), shape=(int(n), int(k)),
                         codes=codes, scales=scales, zeros=zeros, method=method)
    return qt, {"loss": float(loss), "damp": used_damp}
