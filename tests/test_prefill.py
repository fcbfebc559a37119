"""The int8 prefill GEMM DSL kernel (lutc/kernels/prefill.py): per-32 int8 activations, b-bit codes
mapped to int8 levels with tl.lookup, tl.dot; checked against the same integer math in numpy and
against the float product x @ W_hat^T."""
import numpy as np
import pytest

import quant
from lutc.kernels.prefill import QB, prefill_matmul, prepare_weights, quantize_activations


def _quantize_ref(x):
    M, K = x.shape
    KB = -(-K // QB)
    xp = np.zeros((M, KB * QB), np.float32)
    xp[:, :K] = x
    blocks = xp.reshape(M, KB, QB)
    s = np.abs(blocks).max(-1) / np.float32(127.0)
    safe = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)
    q = np.where(s[..., None] > 0, np.round(blocks / safe[..., None]), 0).astype(np.int8)
    return q.reshape(M, KB * QB)[:, :K], s.astype(np.float32)


def _int_ref(xq, xs, qw, prepared):
    codes, levels, ws = prepared
    (M, K), N = xq.shape, qw.N
    y = np.zeros((M, N), np.float64)
    for kb in range(xs.shape[1]):
        k = slice(kb * QB, min(K, (kb + 1) * QB))
        g = kb * QB // qw.group_size
        W = levels[np.arange(N)[:, None], g, codes[:, k]].astype(np.int64)
        y += (xq[:, k].astype(np.int64) @ W.T) * xs[:, kb:kb + 1].astype(np.float64) * ws[None, :, g]
    return y


def test_activation_quantization_is_exact():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 77)) * 3).astype(np.float32)
    x[1, :32] = 0.0                       # an all-zero block: scale 0, codes 0
    x[2, 5] = 1e4                         # one outlier dominates its block
    xq, xs = quantize_activations(x)
    rq, rs = _quantize_ref(x)
    np.testing.assert_array_equal(xs, rs)
    np.testing.assert_array_equal(xq, rq)
    assert np.abs(xq).max() <= 127


@pytest.mark.parametrize("bits,gs,M,N,K", [(1, 32, 3, 17, 64), (2, 64, 7, 45, 200), (3, 128, 9, 33, 256),
                                           (4, 32, 1, 16, 97), (4, 64, 12, 20, 130)])
def test_prefill_matches_integer_reference_and_float(bits, gs, M, N, K):
    rng = np.random.default_rng(bits * 100 + gs)
    qw = quant.quantize(rng.standard_normal((N, K)).astype(np.float32), bits, gs, method="rtn")
    x = rng.standard_normal((M, K)).astype(np.float32)
    prepared = prepare_weights(qw)
    y = prefill_matmul(x, qw, prepared, threads=2)
    xq, xs = _quantize_ref(x)
    ref = _int_ref(xq, xs, qw, prepared)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * scale)
    full = x @ qw.dequantize().T           # int8 levels and activations: about 1% off
    assert np.abs(y - full).max() <= 0.03 * np.abs(full).max()


def test_levels_use_the_full_int8_range():
    qw = quant.quantize(np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32), 2, 32)
    codes, levels, ws = prepare_weights(qw)
    assert levels.shape == (8, 2, 4) and levels.dtype == np.int8
    assert (np.abs(levels).max(-1) == 127).all() and (ws > 0).all()


def test_prefill_on_the_avx2_target():
    """The same kernel compiled for x86-avx2 (vpmaddwd) gives the host's (vpdpbusd) result."""
    from lutc.backend.target import get_target, runnable
    from lutc.backend.toolchain import native_mismatch
    from lutc.kernels.prefill import int8_gemm
    if native_mismatch(get_target("x86-avx2")) is not None:
        pytest.skip("x86-avx2 code cannot run here")
    rng = np.random.default_rng(4)
    M, N, K = 5, 21, 100
    qw = quant.quantize(rng.standard_normal((N, K)).astype(np.float32), 2, 32, method="rtn")
    x = rng.standard_normal((M, K)).astype(np.float32)
    codes, levels, ws = prepared = prepare_weights(qw)
    xq, xs = quantize_activations(x)
    sig = dict(xq="*i8", xs="*f32", codes="*u8", levels="*i8", wscale="*f32", y="*f32", M="i32", N="i32",
               K="i32", KB="i32", G="i32")
    fn = int8_gemm.compile(sig, dict(BM=4, BN=8, GS=32, NC=4, QB=QB), 2, runnable("x86-avx2"))
    y = np.zeros((M, N), np.float32)
    fn.launch((2, 3), [xq, xs, codes, levels, ws, y, M, N, K, xs.shape[1], qw.num_groups])
    ref = _int_ref(xq, xs, qw, prepared)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
