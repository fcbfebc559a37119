"""Tests for hlq-ft (quant.finetune): block-wise fine-tuning of HLQ scales/zeros on tiny LLaMA models."""

import numpy as np
import pytest
import torch

from _quant_fixtures import tiny_llama, token_ids

import quant
from quant.finetune import FTConfig, FTLinear, finetune_block
from quant.model_quant import quantize_model
from quant.torch_model import build_torch_model

FT = {"epochs": 3, "batch": 2, "lr": 3e-3}


@pytest.fixture(scope="module")
def model():
    return tiny_llama(hidden=64, layers=2, inter=96)


@pytest.fixture(scope="module")
def ids():
    return token_ids(8, 48, seed=3)


@pytest.fixture(scope="module")
def ft_model(model, ids):
    return quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft=FT)


def logits_err(model, qm, ids):
    with torch.no_grad():
        return float(((model(ids).logits - build_torch_model(qm)(ids).logits) ** 2).mean())


def test_block_reconstruction_loss_falls(ft_model):
    ft = ft_model.meta["ft"]
    assert len(ft["mse_before"]) == len(ft["mse_after"]) == 2 and ft["blocks_kept"] == 2
    for before, after in zip(ft["mse_before"], ft["mse_after"]):
        assert after < 0.97 * before


def test_finetune_block_directly_lowers_its_loss():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False))
    w = lin[0].weight.detach()
    qt = quant.quantize(w.numpy(), 2, 16, method="hlq")
    x = torch.randn(16, 8, 64)
    target = lin(x).detach()
    lin[0].weight.data.copy_(torch.from_numpy(qt.dequantize()))
    new, info, y = finetune_block(lin, {"0": qt}, x, target, lambda m, b: m(b), FTConfig(epochs=10, batch=4, lr=1e-2))
    assert info["kept"] and info["loss_after"] < 0.95 * info["loss_before"] and info["steps"] == 40
    np.testing.assert_array_equal(new["0"].codes, qt.codes)  # codes stay fixed
    assert new["0"].scales.dtype == np.float16 and new["0"].zeros.dtype == np.float16
    # the reported loss is measured with the fp16-rounded parameters
    ref = torch.nn.functional.linear(x, torch.from_numpy(new["0"].dequantize()))
    assert float(torch.nn.functional.mse_loss(ref, target)) == pytest.approx(info["loss_after"], rel=1e-4)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    assert isinstance(lin[0], torch.nn.Linear)  # the original module is back


def test_ftlinear_starts_at_the_quantized_weights():
    qt = quant.quantize(np.random.default_rng(0).normal(size=(24, 40)).astype(np.float32), 3, 16, method="hlq")
    np.testing.assert_allclose(FTLinear(qt).weight().detach().numpy(), qt.dequantize(), rtol=1e-6, atol=1e-6)


def test_beats_hlq_gptq_with_the_same_codes(model, ids, ft_model):
    base = quantize_model(model, 2, 32, "hlq-gptq", calib=ids, progress=False)
    assert logits_err(model, ft_model, ids) < logits_err(model, base, ids)
    for name, qt in ft_model.linears.items():
        assert qt.method == "hlq-ft"
        if name.startswith("model.layers.0."):  # later blocks are calibrated on fine-tuned inputs
            np.testing.assert_array_equal(qt.codes, base.linears[name].codes)
    assert ft_model.meta["method"] == "hlq-ft" and ft_model.meta["calibration"]["ft"]["epochs"] == 3


def test_deterministic(model, ids, ft_model):
    again = quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft=FT)
    for name, qt in ft_model.linears.items():
        other = again.linears[name]
        assert qt.scales.tobytes() == other.scales.tobytes() and qt.zeros.tobytes() == other.zeros.tobytes()
    other_seed = quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft={**FT, "seed": 1})
    assert any(qt.scales.tobytes() != other_seed.linears[n].scales.tobytes() for n, qt in ft_model.linears.items())


def test_checkpoint_round_trip(ft_model, model, ids, tmp_path):
    quant.save_checkpoint(ft_model, tmp_path / "ck")
    back = quant.load_checkpoint(tmp_path / "ck")
    assert back.meta["method"] == "hlq-ft"
    for name, qt in ft_model.linears.items():
        b = back.linears[name]
        assert b.method == "hlq-ft"
        for f in ("codes", "scales", "zeros"):
            np.testing.assert_array_equal(getattr(b, f), getattr(qt, f))
    assert logits_err(model, back, ids) == logits_err(model, ft_model, ids)


def test_e2e_pass_lowers_the_next_token_loss_with_scales_only(model, ids, ft_model):
    """EfficientQAT's E2E-QP on top of the block-wise pass: only the scales move (codes and zeros are
    the block-wise result's), the calibration loss falls, and the result is deterministic."""
    e2e = {**FT, "e2e_epochs": 3, "e2e_lr": 3e-3}
    qm = quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft=e2e)
    info = qm.meta["ft"]["e2e"]
    assert info["kept"] and info["loss_after"] < info["loss_before"] and info["steps"] == 3 * 4
    assert qm.meta["calibration"]["ft"]["e2e_epochs"] == 3
    moved = 0
    for name, qt in qm.linears.items():
        base = ft_model.linears[name]
        np.testing.assert_array_equal(qt.codes, base.codes)
        np.testing.assert_array_equal(qt.zeros, base.zeros)
        moved += qt.scales.tobytes() != base.scales.tobytes()
        assert qt.method == "hlq-ft"
    assert moved == len(qm.linears)  # lm_head included
    again = quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft=e2e)
    assert all(qt.scales.tobytes() == again.linears[n].scales.tobytes() for n, qt in qm.linears.items())


def test_e2e_needs_the_model_in_memory(model, ids, tmp_path):
    with pytest.raises(ValueError, match="offload_dir"):
        quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft={"e2e_epochs": 1},
                       offload_dir=tmp_path / "codes")


@pytest.mark.parametrize("bad", [{"epochs": -1}, {"lr": 0.0}, {"batch": 0}, {"samples": 0}, {"lr": float("nan")},
                                 {"e2e_epochs": -1}, {"e2e_lr": 0.0}, {"e2e_lr": True}])
def test_bad_knobs(model, ids, bad):
    with pytest.raises(ValueError, match="ft "):
        quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft=bad)


def test_cli_quantize_hlq_ft(tmp_path, capsys):
    from _quant_fixtures import SAMPLE_TEXT, save_hf_dir
    from lutc.cli import main
    save_hf_dir(tmp_path / "hf", seed=3)
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    out = tmp_path / "q"
    rc = main(["quantize", str(tmp_path / "hf"), "--bits", "2", "--group-size", "32", "--method", "hlq-ft",
               "--out", str(out), "--calib", str(calib), "--nsamples", "4", "--seqlen", "32", "--quiet",
               "--ft-epochs", "1", "--ft-samples", "4", "--ft-lr", "2e-3", "--ft-batch", "2", "--ft-e2e-epochs", "1",
               "--ft-e2e-lr", "1e-3"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    back = quant.load_checkpoint(out)
    assert back.meta["method"] == "hlq-ft"
    assert back.meta["ft"]["epochs"] == 1 and back.meta["ft"]["lr"] == 2e-3 and back.meta["ft"]["samples"] == 4
    assert back.meta["ft"]["e2e_epochs"] == 1 and back.meta["ft"]["e2e_lr"] == 1e-3 and "e2e" in back.meta["ft"]
    assert main(["quantize", str(tmp_path / "hf"), "--bits", "2", "--method", "hlq-ft", "--out", str(tmp_path / "x"),
                 "--calib", str(calib), "--ft-lr", "-1", "--quiet"]) == 2
    assert "ft lr" in capsys.readouterr().err
