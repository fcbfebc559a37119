"""An int8 prefill GEMM in the lutc DSL: y (M, N) = x (M, K) @ W_hat^T with tl.dot.

- `quantize_act` (a DSL kernel) quantizes activations per block of QB = 32 along K to int8:
  s = max|x| / 127, q = round(x / s) (ties to even), one float32 scale per (row, block).
- Weights keep their b-bit codes. Host-side, `prepare_weights` turns each (row, group)'s 2^b
  code values (quant.code_values) into int8 levels, levels = round(v / s_w) with
  s_w = max|v| / 127, and one float32 scale s_w.
- `int8_gemm` (a DSL kernel) walks K in blocks of 32: per output column it maps the block's codes
  to int8 levels through that column's 2^b-entry table with `tl.lookup`, multiplies the (BM, 32)
  int8 activation tile by the (32, BN) int8 weight tile with `tl.dot` (exact int32), and adds
  dot * s_x[m] * s_w[n] to a float32 accumulator.

Not wired into the runtime or the tuner; `prefill_matmul` runs it and tests/test_prefill.py
checks it against numpy.
"""
from __future__ import annotations

import numpy as np

import lutc.language as tl
from lutc import jit

QB = 32  # activation quantization block along K (and the K step of the GEMM)


@jit
def quantize_act(x, xq, xs, K, KB, QB: tl.constexpr):
    m = tl.program_id(0)
    kb = tl.program_id(1)
    k = kb * QB + tl.arange(0, QB)
    v = tl.load(x + m * K + k, mask=k < K, other=0.0)
    s = tl.max(tl.abs(v)) / 127.0
    q = tl.where(s > 0.0, tl.round(v / tl.where(s > 0.0, s, 1.0)), 0.0)
    tl.store(xq + m * K + k, q.to(tl.int8), mask=k < K)
    tl.store(xs + m * KB + kb, s)


@jit
def int8_gemm(xq, xs, codes, levels, wscale, y, M, N, K, KB, G,
              BM: tl.constexpr, BN: tl.constexpr, GS: tl.constexpr, NC: tl.constexpr,
              QB: tl.constexpr):
    tl.static_assert(GS % QB == 0, "the weight group size must be a multiple of 32")
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    n0 = tl.program_id(1) * BN
    offs_n = n0 + tl.arange(0, BN)
    mm = offs_m < M
    mn = offs_n < N
    acc = tl.zeros((BM, BN), tl.float32)
    for kb in range(0, KB):
        k = kb * QB + tl.arange(0, QB)
        mk = k < K
        x = tl.load(xq + offs_m[:, None] * K + k[None, :], mask=mm[:, None] & mk[None, :])
        sx = tl.load(xs + offs_m * KB + kb, mask=mm, other=0.0)
        g = (kb * QB) // GS
        w = None
        for j in tl.static_range(BN):
            nj = min(n0 + j, N - 1)  # rows past N repeat the last one; their outputs are masked
            table = tl.load(levels + (nj * G + g) * NC + tl.arange(0, NC))
            wj = tl.lookup(table, tl.load(codes + nj * K + k, mask=mk))
            w = wj if j == 0 else tl.concat(w, wj)
        d = tl.dot(x, tl.trans(tl.reshape(w, (BN, QB))))
        ws = tl.load(wscale + offs_n * G + g, mask=mn, other=0.0)
        acc += d.to(tl.float32) * (sx[:, None] * ws[None, :])
    tl.store(y + offs_m[:, None] * N + offs_n[None, :], acc, mask=mm[:, None] & mn[None, :])


def prepare_weights(qw):
    """(codes u8 (N, K), levels i8 (N, G, 2^b), wscale f32 (N, G)) of a quant.QuantizedTensor."""
    from quant.tensor import code_values
    vals = code_values(qw.scales, qw.zeros)  # (N, G, 2^b) float32
    s = np.abs(vals).max(-1) / np.float32(127.0)
    safe = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)
    levels = np.clip(np.round(vals / safe[..., None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(qw.codes), np.ascontiguousarray(levels), s.astype(np.float32)


def quantize_activations(x: np.ndarray, threads=1):
    """(xq i8 (M, K), xs f32 (M, ceil(K / 32))) computed by the quantize_act kernel."""
    x = np.ascontiguousarray(x, np.float32)
    M, K = x.shape
    KB = -(-K // QB)
    xq, xs = np.zeros((M, K), np.int8), np.zeros((M, KB), np.float32)
    quantize_act[(M, KB)](x, xq, xs, K, KB, QB=QB, threads=threads)
    return xq, xs


def prefill_matmul(x: np.ndarray, qw, prepared=None, BM=8, BN=16, threads=1) -> np.ndarray:
    """y (M, N) float32 ~= x @ qw.dequantize().T through int8 activations, levels and tl.dot."""
    codes, levels, wscale = prepared if prepared is not None else prepare_weights(qw)
    xq, xs = quantize_activations(x, threads)
    (M, K), N, G = xq.shape, qw.N, qw.num_groups
    y = np.zeros((M, N), np.float32)
    int8_gemm[(-(-M // BM), -(-N // BN))](xq, xs, codes, levels, wscale, y, M, N, K, xs.shape[1], G,
                                          BM=BM, BN=BN, GS=qw.group_size, NC=1 << qw.bits, QB=QB,
                                          threads=threads)
    return y
