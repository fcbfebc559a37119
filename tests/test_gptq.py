"""Tests for quant.gptq: Hessian accumulation, GPTQ / HLQ-GPTQ error compensation, singular Hessians."""

import numpy as np
import pytest
import torch

import quant
from quant.gptq import HessianAccumulator, gptq_quantize
from quant.model_quant import split_rows


def correlated_inputs(k, m=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, k, generator=g) / k ** 0.5
    x = torch.randn(m, k, generator=g) @ a + 0.2 * torch.randn(m, k, generator=g)
    x[:, ::5] *= 4  # a few high-energy channels
    return x


def weights(n, k, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.05


def hessian(x):
    acc = HessianAccumulator(x.shape[1])
    for part in x.split(300):
        acc.add(part)
    return acc.H


def out_err(x, w, qt):
    return float(((x @ w.T - x @ torch.from_numpy(qt.dequantize()).T) ** 2).mean())


def test_hessian_accumulator_matches_batch_formula():
    x = correlated_inputs(48, 1000)
    torch.testing.assert_close(hessian(x), 2 * x.T @ x / 1000, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="last dimension 48"):
        HessianAccumulator(48).add(torch.zeros(3, 47))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_beats_its_no_calibration_counterpart(bits):
    k = 96
    x, w = correlated_inputs(k), weights(64, k)
    h = hessian(x)
    for fit, base in (("rtn", "rtn"), ("hlq", "hlq")):
        qt, info = gptq_quantize(w, h, bits, 32, fit=fit)
        ref = quant.quantize(w.numpy(), bits, 32, method=base)
        assert qt.method == ("gptq" if fit == "rtn" else "hlq-gptq")
        assert out_err(x, w, qt) < out_err(x, w, ref)
        assert np.isfinite(info["loss"]) and info["loss"] > 0
    hg, _ = gptq_quantize(w, h, bits, 32, fit="hlq")
    g, _ = gptq_quantize(w, h, bits, 32, fit="rtn")
    assert out_err(x, w, hg) < out_err(x, w, g)


@pytest.mark.parametrize("fit,method", [("rtn", "rtn"), ("hlq", "hlq")])
def test_diagonal_hessian_means_no_compensation(fit, method):
    """With uncorrelated inputs GPTQ has nothing to compensate: it reproduces the plain fit."""
    w = weights(40, 70)
    h = torch.diag(torch.rand(70) + 0.5)
    qt, _ = gptq_quantize(w, h, 3, 32, fit=fit, damp=0.0)
    ref = quant.quantize(w.numpy(), 3, 32, method=method)
    np.testing.assert_array_equal(qt.scales, ref.scales)
    np.testing.assert_array_equal(qt.zeros, ref.zeros)
    np.testing.assert_allclose(qt.dequantize(), ref.dequantize(), atol=1e-6)


def test_partial_last_group_and_block_smaller_than_group():
    k = 100  # groups of 64: the last has 36 columns
    x, w = correlated_inputs(k), weights(24, k)
    a, _ = gptq_quantize(w, hessian(x), 2, 64, fit="hlq")
    b, _ = gptq_quantize(w, hessian(x), 2, 64, fit="hlq", block_size=16)
    assert a.scales.shape == (2, 24, 2) and a.codes.shape == (24, 100)
    np.testing.assert_allclose(a.dequantize(), b.dequantize(), atol=1e-5)


@pytest.mark.parametrize("fit", ["rtn", "hlq"])
def test_rows_are_independent(fit):
    """q/k/v are quantized as one concatenated matrix: that must equal quantizing them apart."""
    x = correlated_inputs(64)
    h, w = hessian(x), weights(48, 64)
    whole, _ = gptq_quantize(w, h, 2, 32, fit=fit)
    parts = split_rows(whole, [16, 32])
    for part, (r0, r1) in zip(parts, [(0, 16), (16, 48)]):
        alone, _ = gptq_quantize(w[r0:r1], h, 2, 32, fit=fit)
        np.testing.assert_array_equal(part.codes, alone.codes)
        np.testing.assert_array_equal(part.scales, alone.scales)


@pytest.mark.parametrize("fit", ["rtn", "hlq"])
def test_act_order_keeps_original_column_order(fit):
    x = correlated_inputs(80)
    x[:, 3] *= 30  # make act-order permute a lot
    w, h = weights(32, 80), hessian(x)
    qt, _ = gptq_quantize(w, h, 3, 16, fit=fit, act_order=True)
    static = quant.quantize(w.numpy(), 3, 16, method=fit)  # static groups: parameters of the plain fit
    np.testing.assert_array_equal(qt.scales, static.scales)
    assert out_err(x, w, qt) < out_err(x, w, static)
    plain, _ = gptq_quantize(w, h, 3, 16, fit=fit)
    assert out_err(x, w, qt) < 3 * out_err(x, w, plain)


def test_dead_input_channels_singular_hessian_stay_finite():
    k = 64
    x = correlated_inputs(k, 512)
    x[:, [0, 7, 40]] = 0.0  # dead channels: zero rows/columns in H
    x[:, 20] = x[:, 21]  # duplicated channel: H singular even without the dead ones
    w = weights(32, k)
    h = hessian(x)
    assert torch.linalg.matrix_rank(h) < k
    for fit in ("rtn", "hlq"):
        qt, info = gptq_quantize(w, h, 2, 32, fit=fit)
        assert np.isfinite(qt.dequantize()).all() and np.isfinite(info["loss"])
        assert out_err(x, w, qt) < out_err(x, w, quant.quantize(w.numpy(), 2, 32, method=fit))


def test_rank_deficient_hessian_without_damping_grows_damping():
    x = correlated_inputs(64, 16)  # 16 samples, 64 channels: rank 16
    w = weights(8, 64)
    qt, info = gptq_quantize(w, hessian(x), 3, 32, fit="hlq", damp=0.0)
    assert np.isfinite(qt.dequantize()).all()
    assert info["damp"] > 0


def test_all_zero_hessian_is_plain_fit():
    w = weights(8, 40)
    qt, _ = gptq_quantize(w, torch.zeros(40, 40), 2, 16, fit="rtn")
    assert np.isfinite(qt.dequantize()).all()


def test_bad_inputs():
    w, h = weights(8, 32), torch.eye(32)
    with pytest.raises(ValueError, match="fit"):
        gptq_quantize(w, h, 2, 16, fit="gptq")
    with pytest.raises(ValueError, match=r"H: expected shape \(32, 32\)"):
        gptq_quantize(w, torch.eye(31), 2, 16)
    with pytest.raises(ValueError, match="bits"):
        gptq_quantize(w, h, 5, 16)
    with pytest.raises(ValueError, match="non-finite"):
        gptq_quantize(w, h * float("nan"), 2, 16)


# ----- equivalence with the former implementation (tests/_quant_reference.py) ----------------
def test_inverse_cholesky_factor_matches_former_route_and_inverts_h():
    from _quant_reference import inverse_cholesky_reference
    from quant.gptq import _inverse_cholesky, _u_block

    for k, damp in ((50, 0.01), (130, 0.1)):
        h = hessian(correlated_inputs(k, 400, seed=k))
        m, used = _inverse_cholesky(torch.flip(h, (0, 1)).contiguous(), damp)
        assert used == damp
        u = _u_block(m, 0, k, 0, k)
        assert torch.equal(u, torch.triu(u)) and (torch.diagonal(u) > 0).all()
        hd = h.double() + damp * float(torch.diagonal(h).mean()) * torch.eye(k, dtype=torch.float64)
        torch.testing.assert_close(u.double().T @ u.double() @ hd, torch.eye(k, dtype=torch.float64),
                                   atol=2e-3, rtol=0)
        torch.testing.assert_close(u, inverse_cholesky_reference(h, damp), rtol=2e-3, atol=2e-4 * float(u.abs().max()))
        np.testing.assert_array_equal(_u_block(m, 3, 20, 10, 40).numpy(), u[3:20, 10:40].numpy())


@pytest.mark.parametrize("fit", ["rtn", "hlq"])
@pytest.mark.parametrize("bits,n,k,gs", [(2, 64, 256, 64), (3, 37, 200, 64), (4, 20, 130, 128), (1, 16, 96, 32)])
def test_gptq_matches_former_implementation(fit, bits, n, k, gs):
    """Same codes and parameters as the former GPTQ loop, loss equal up to float noise."""
    from _quant_reference import gptq_reference

    x = correlated_inputs(k, 1024, seed=bits)
    x[:, 5] = 0.0  # a dead channel
    w, h = weights(n, k, seed=n), hessian(x)
    ref, ref_loss = gptq_reference(w, h, bits, gs, fit=fit)
    qt, info = gptq_quantize(w, h, bits, gs, fit=fit)
    assert (qt.codes == ref.codes).mean() > 0.995  # flips only where float noise moves a near-tie
    np.testing.assert_array_equal(qt.scales[:, :, 0], ref.scales[:, :, 0])  # group 0: before any compensation
    assert abs(info["loss"] - ref_loss) <= 1e-3 * ref_loss
    assert abs(out_err(x, w, qt) - out_err(x, w, ref)) <= 1e-3 * out_err(x, w, ref)


def test_hessian_accumulator_is_taken_by_gptq():
    x, w = correlated_inputs(64, 500), weights(16, 64)
    acc = HessianAccumulator(64)
    acc.add(x)
    h = acc.H.clone()
    a, _ = gptq_quantize(w, acc, 2, 32, fit="hlq")
    b, _ = gptq_quantize(w, h, 2, 32, fit="hlq")
    assert acc.H is None
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scales, b.scales)
    with pytest.raises(ValueError, match="already taken"):
        acc.add(x)
    with pytest.raises(ValueError, match="already taken"):
        gptq_quantize(w, acc, 2, 32)
