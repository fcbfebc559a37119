"""HLQ fit (ELUTQ): alternate best-code assignment and least-squares per-plane scales/zero, from RTN."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .rtn import group_view, rtn_fit
from .tensor import bitplanes, code_values

__all__ = ["hlq_fit"]

_CHUNK_ELEMS = 1 << 17  # weights per row chunk: bounds memory and keeps the working set in cache
_SEARCH_BLOCK_BYTES = 1 << 19  # binary search: rows per block whose table (float32) fits in L2
_MAX_THREADS = 8  # row chunks are independent; numpy (bincount, ufuncs, solve) releases the GIL
_RIDGE = 1e-4  # proximal ridge: pulls undetermined directions (empty or all-ones plane) to the previous fit


def hlq_fit(w: np.ndarray, bits: int, group_size: int, rounds: int = 15):
    """HLQ fit of float32 w (N, K); returns (codes uint8 (N, K), scales fp16 (bits, N, G), zeros fp16 (N, G)).

    Per (row, group) the result is the best of: the RTN start and every iterate, each measured
    with its fp16-rounded parameters and the codes nearest to them. So its squared error is
    never larger than RTN's, group by group.
    """
    n, k = w.shape
    g = math.ceil(k / group_size)
    codes = np.empty((n, k), dtype=np.uint8)
    scales = np.empty((bits, n, g), dtype=np.float16)
    zeros = np.empty((n, g), dtype=np.float16)
    step = max(1, _CHUNK_ELEMS // (g * group_size))

    def fit_rows(r0: int) -> None:
        r1 = min(n, r0 + step)
        codes[r0:r1], scales[:, r0:r1], zeros[r0:r1] = _fit_chunk(w[r0:r1], bits, group_size, rounds)

    starts = range(0, n, step)
    threads = min(len(starts), os.cpu_count() or 1, _MAX_THREADS)
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fit_rows, starts))  # list() re-raises any worker exception
    else:
        for r0 in starts:
            fit_rows(r0)
    return codes, scales, zeros


def _nearest_ranks(wg: np.ndarray, values: np.ndarray):
    """Nearest candidate for each weight, as (rank uint8 (n, G, gs), order (n, G, C)).

    Exact 1-D nearest neighbour over all C codes (the same argmin as brute-force squared
    error): sort each (row, group)'s C values, count the midpoints a weight exceeds; that
    rank's code is order[..., rank].
    """
    order = np.argsort(values, axis=-1, kind="stable")
    vs = np.take_along_axis(values, order, axis=-1)
    mid = (vs[..., 1:] + vs[..., :-1]) * np.float32(0.5)  # (n, G, C-1)
    rank = np.zeros(wg.shape, dtype=np.uint8)
    for j in range(mid.shape[-1]):
        rank += wg > mid[..., j:j + 1]
    return rank, order


class _Stats:
    """Per (row, group, code) count and weight sum, via bincounts over a flat (row, group, code) index."""

    def __init__(self, wg: np.ndarray, valid_last: int, ncodes: int):
        n, g, gs = wg.shape
        self.shape = (n, g, ncodes)
        self.nbins = n * g * ncodes
        self.base = (np.arange(n * g, dtype=np.intp) * ncodes).reshape(n, g, 1)
        self.pad = valid_last < gs  # padded tail of the last group goes to a dummy bin
        self.valid_last = valid_last
        self.wflat = wg.reshape(-1).astype(np.float64)

    def __call__(self, codes: np.ndarray):
        """Stats indexed by code, for codes (n, G, gs)."""
        idx = self.base + codes
        if self.pad:
            idx[:, -1, self.valid_last:] = self.nbins
        idx = idx.reshape(-1)
        cnt = np.bincount(idx, minlength=self.nbins + 1)[:self.nbins].reshape(self.shape)
        sw = np.bincount(idx, weights=self.wflat, minlength=self.nbins + 1)[:self.nbins].reshape(self.shape)
        return cnt.astype(np.float64), sw

    def codes(self, rank: np.ndarray, order: np.ndarray) -> np.ndarray:
        """Map ranks to codes, uint8 (n, G, gs)."""
        return order.astype(np.uint8).reshape(-1)[self.base + rank]


class _SortedGroups:
    """Each (row, group)'s weights sorted once, with float64 prefix sums: the code statistics of
    nearest-code assignment under any parameters, without touching every weight per round.

    Nearest-code ranks are rank = #(w > mid_j) over the sorted code values' midpoints (as in
    _nearest_ranks); in sorted order the weights of rank r are the slice between
    #(w <= mid_{r-1}) and #(w <= mid_r), found by a batched binary search. Counts are exact;
    weight sums are differences of prefix sums (float64 rounding noise against direct sums).
    """

    def __init__(self, wg: np.ndarray, valid_last: int):
        n, g, gs = wg.shape
        ws = wg.copy()
        ws[:, -1, valid_last:] = np.inf  # padding sorts last and is never <= a midpoint
        ws.sort(axis=-1)
        self.ws = ws.reshape(n * g, gs)
        # search table: -inf, the sorted row, +inf up to a power-of-two width (no bounds checks)
        self.width = 1 << gs.bit_length()  # > gs
        ext = np.full((n * g, self.width), np.inf, np.float32)
        ext[:, 0] = -np.inf
        ext[:, 1:gs + 1] = self.ws
        self.ext = ext.reshape(-1)
        self.base = (np.arange(n * g, dtype=np.intp) * self.width)[:, None]
        w64 = self.ws.astype(np.float64)
        w64.reshape(n, g, gs)[:, -1, valid_last:] = 0.0  # the +inf padding adds nothing
        self.csum = np.empty((n * g, gs + 1), np.float64)
        self.csum[:, 0] = 0.0
        self.csum[:, 1:] = np.cumsum(w64, axis=-1)  # contiguous last-axis cumsum: the fast layout
        self.csum_base = (np.arange(n * g, dtype=np.intp) * (gs + 1))[:, None]
        self.nvalid = np.full((n, g), gs, np.intp)
        self.nvalid[:, -1] = valid_last
        self.shape = (n, g)

    def _count_le(self, mid: np.ndarray) -> np.ndarray:
        """#(w <= mid) per (row, group) for mid (n*G, J), by branch-free binary search over the sorted
        rows, in blocks of rows whose search table stays in cache across the search steps."""
        pos = np.zeros(mid.shape, np.intp)
        rows = max(1, _SEARCH_BLOCK_BYTES // (4 * self.width))
        for r0 in range(0, mid.shape[0], rows):
            r1 = min(mid.shape[0], r0 + rows)
            p, md, base = pos[r0:r1], mid[r0:r1], self.base[:r1 - r0] + r0 * self.width
            step = self.width >> 1
            while step:  # invariant: ext[row, p] <= mid (ext[:, 0] = -inf), i.e. count >= p
                p += (self.ext[base + (p + step)] <= md) * step
                step >>= 1
        return pos

    def __call__(self, values: np.ndarray):
        """(cnt, sw) per (row, group, code) for nearest-code assignment to values (n, G, C)."""
        n, g = self.shape
        c = values.shape[-1]
        order = np.argsort(values, axis=-1, kind="stable")
        vs = np.take_along_axis(values, order, axis=-1)
        mid = ((vs[..., 1:] + vs[..., :-1]) * np.float32(0.5)).reshape(n * g, c - 1)
        bounds = np.empty((n * g, c + 1), np.intp)
        bounds[:, 0] = 0
        bounds[:, 1:-1] = self._count_le(mid)
        bounds[:, -1] = self.nvalid.reshape(-1)
        sums = self.csum.reshape(-1)[self.csum_base + bounds]
        cnt = np.diff(bounds, axis=-1).astype(np.float64).reshape(n, g, c)
        sw = np.diff(sums, axis=-1).reshape(n, g, c)
        out_cnt, out_sw = np.empty_like(cnt), np.empty_like(sw)
        np.put_along_axis(out_cnt, order, cnt, axis=-1)  # rank -> code
        np.put_along_axis(out_sw, order, sw, axis=-1)
        return out_cnt, out_sw


def _params_fp16(params: np.ndarray):
    """float64 params (n, G, bits+1) -> (scales fp16 (bits, n, G), zeros fp16 (n, G))."""
    p16 = params.astype(np.float16)
    return np.ascontiguousarray(np.moveaxis(p16[..., :-1], -1, 0)), np.ascontiguousarray(p16[..., -1])


def _fit_chunk(w: np.ndarray, bits: int, group_size: int, rounds: int):
    n, k = w.shape
    ncodes = 1 << bits
    rtn_codes, rtn_s, rtn_z = rtn_fit(w, bits, group_size)
    if rounds == 0:
        return rtn_codes, rtn_s, rtn_z
    wg = group_view(w, group_size, mode="zero")  # zero padding: no effect on sums of w or w^2
    g = wg.shape[1]
    valid_last = k - (g - 1) * group_size
    stats = _Stats(wg, valid_last, ncodes)
    sorted_groups = _SortedGroups(wg, valid_last)
    sumw2 = np.einsum("ngk,ngk->ng", wg, wg, dtype=np.float64)

    # Design matrix rows per code: [bit_0(c) .. bit_{b-1}(c), 1], and their outer products.
    design = np.concatenate([bitplanes(np.arange(ncodes), bits).T, np.ones((ncodes, 1), np.uint8)], 1)
    design = design.astype(np.float64)  # (C, b+1)
    outer = np.einsum("ci,cj->cij", design, design).reshape(ncodes, -1)
    eye = np.eye(bits + 1) * _RIDGE

    def error(params, cnt, sw):
        """Squared error per (row, group) of params with the given code statistics."""
        s16, z16 = _params_fp16(params)
        v = code_values(s16, z16).astype(np.float64)  # exactly the float32 values dequantize uses
        return sumw2 - 2.0 * np.einsum("ngc,ngc->ng", v, sw) + np.einsum("ngc,ngc->ng", cnt, v * v)

    params = np.concatenate([np.moveaxis(rtn_s, 0, -1), rtn_z[..., None]], -1).astype(np.float64)
    cnt, sw = stats(group_view(rtn_codes, group_size, mode="zero"))  # RTN's own codes (rank is the code)
    best_params, best_err = params, None
    for _ in range(rounds):
        err = error(params, cnt, sw)
        if best_err is None:
            best_err = err
        else:
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_params = np.where(better[..., None], params, best_params)
        # (b) least squares for [s_0 .. s_{b-1}, z] given the codes, proximal to the previous fit.
        ata = (cnt @ outer).reshape(n, g, bits + 1, bits + 1) + eye
        rhs = sw @ design + _RIDGE * params
        new = np.linalg.solve(ata, rhs[..., None])[..., 0]
        with np.errstate(over="ignore", invalid="ignore"):
            new = new.astype(np.float16).astype(np.float64)
        new = np.where(np.isfinite(new).all(-1, keepdims=True), new, params)
        if np.array_equal(new, params):
            break  # converged: the codes below would be the same as the current ones
        params = new
        # (a) best code for every weight under the fp16-rounded parameters: only its statistics.
        cnt, sw = sorted_groups(code_values(*_params_fp16(params)))
    else:
        err = error(params, cnt, sw)
        better = err < best_err
        best_params = np.where(better[..., None], params, best_params)

    s16, z16 = _params_fp16(best_params)
    codes3 = stats.codes(*_nearest_ranks(wg, code_values(s16, z16)))
    codes = np.ascontiguousarray(codes3.reshape(n, -1)[:, :k])
    # Final safeguard, measured exactly as dequantize does: per group keep RTN where it is better.
    hlq_err = _group_sq_err(wg, codes, s16, z16, group_size, valid_last)
    rtn_err = _group_sq_err(wg, rtn_codes, rtn_s, rtn_z, group_size, valid_last)
    use_rtn = rtn_err <= hlq_err
    if use_rtn.any():
        s16 = np.where(use_rtn[None], rtn_s, s16)
        z16 = np.where(use_rtn, rtn_z, z16)
        codes = np.where(np.repeat(use_rtn, group_size, axis=1)[:, :k], rtn_codes, codes)
    return codes, s16, z16


def _group_sq_err(wg, codes, s16, z16, group_size, valid_last):
    """Per (row, group) squared error of the float32 reconstruction, summed in float64."""
    v = code_values(s16, z16)  # (n, G, C)
    c3 = group_view(codes, group_size, mode="zero")
    d = np.take_along_axis(v, c3, axis=-1) - wg
    d[:, -1, valid_last:] = 0
    return np.einsum("ngk,ngk->ng", d, d, dtype=np.float64)
