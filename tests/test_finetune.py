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


def test_e2e_kl_distills_the_float_model(model, ids, ft_model):
    """The "kl" objective: its loss before training is KL(float || block-wise result) on the first 8
    windows, computed here from the float model's own logits (so quantize_model's teacher is the float
    model), it falls, only the scales move, and the run is deterministic."""
    from quant.finetune import _E2E_CHECK
    e2e = {**FT, "e2e_epochs": 3, "e2e_lr": 3e-3, "e2e_loss": "kl"}
    qm = quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft=e2e)
    info = qm.meta["ft"]["e2e"]
    check = ids[:_E2E_CHECK]
    with torch.no_grad():
        logp = torch.log_softmax(model(check).logits, -1)
        logq = torch.log_softmax(build_torch_model(ft_model)(check).logits, -1)
    kl = float((logp.exp() * (logp - logq)).sum(-1).mean())
    assert info["loss"] == "kl" and info["loss_before"] == pytest.approx(kl, rel=1e-4)
    assert info["kept"] and info["loss_after"] < 0.9 * info["loss_before"] and info["steps"] == 3 * 4
    assert qm.meta["ft"]["e2e_loss"] == "kl"
    for name, qt in qm.linears.items():
        np.testing.assert_array_equal(qt.codes, ft_model.linears[name].codes)
        np.testing.assert_array_equal(qt.zeros, ft_model.linears[name].zeros)
    again = quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft=e2e)
    assert all(qt.scales.tobytes() == again.linears[n].scales.tobytes() for n, qt in qm.linears.items())


def test_e2e_kl_needs_a_matching_teacher(ft_model, ids):
    from quant.finetune import finetune_e2e
    cfg = FTConfig(e2e_epochs=1, e2e_loss="kl")
    with pytest.raises(ValueError, match="teacher"):
        finetune_e2e(ft_model, ids, cfg)
    with pytest.raises(ValueError, match="do not match"):
        finetune_e2e(ft_model, ids, cfg, teacher=(torch.zeros(2, 48, 64), torch.zeros(256, 64)))


def test_e2e_needs_the_model_in_memory(model, ids, tmp_path):
    with pytest.raises(ValueError, match="offload_dir"):
        quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft={"e2e_epochs": 1},
                       offload_dir=tmp_path / "codes")


@pytest.mark.parametrize("bad", [{"epochs": -1}, {"lr": 0.0}, {"batch": 0}, {"samples": 0}, {"lr": float("nan")},
                                 {"e2e_epochs": -1}, {"e2e_lr": 0.0}, {"e2e_lr": True}, {"rechoose": 1},
                                 {"schedule": "linear"}, {"e2e_loss": "mse"}, {"retries": -1},
                                 {"block_loss": "l1"}, {"calib": 3}])
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
               "--ft-e2e-lr", "1e-3", "--ft-e2e-loss", "kl", "--ft-schedule", "cosine", "--ft-rechoose",
               "--ft-block-loss", "rel"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    back = quant.load_checkpoint(out)
    assert back.meta["method"] == "hlq-ft"
    assert back.meta["ft"]["epochs"] == 1 and back.meta["ft"]["lr"] == 2e-3 and back.meta["ft"]["samples"] == 4
    assert back.meta["ft"]["e2e_epochs"] == 1 and back.meta["ft"]["e2e_lr"] == 1e-3 and "e2e" in back.meta["ft"]
    assert back.meta["ft"]["schedule"] == "cosine" and back.meta["ft"]["rechoose"] is True
    assert back.meta["ft"]["e2e_loss"] == "kl" and back.meta["ft"]["e2e"]["loss"] == "kl"
    assert back.meta["ft"]["block_loss"] == "rel"
    assert main(["quantize", str(tmp_path / "hf"), "--bits", "2", "--method", "hlq-ft", "--out", str(tmp_path / "x"),
                 "--calib", str(calib), "--ft-lr", "-1", "--quiet"]) == 2
    assert "ft lr" in capsys.readouterr().err


# ----- code re-choice (quant.rechoose; FTConfig rechoose) -------------------------------------------

def test_rechoose_codes_reproduces_gptq_on_its_own_grid():
    """On the grid hlq-gptq chose, GPTQ's column order and compensation pick the same codes again."""
    from quant.gptq import gptq_quantize
    from quant.rechoose import rechoose_codes
    rng = np.random.default_rng(1)
    w = rng.normal(size=(24, 96)).astype(np.float32)
    x = rng.normal(size=(400, 96)).astype(np.float32) @ rng.normal(size=(96, 96)).astype(np.float32)
    H = torch.from_numpy(2 / 400 * x.T @ x)
    qt, _ = gptq_quantize(w, H, 3, 32, fit="hlq")
    again = rechoose_codes(w, H, qt, block_size=32)
    np.testing.assert_array_equal(again.codes, qt.codes)
    assert again.scales is qt.scales and again.zeros is qt.zeros


def test_rechoose_codes_with_identity_hessian_is_the_nearest_level():
    from quant.rechoose import rechoose_codes
    from quant.tensor import code_values
    rng = np.random.default_rng(2)
    w = rng.normal(size=(16, 40)).astype(np.float32)
    qt = quant.quantize(w + rng.normal(scale=0.3, size=w.shape).astype(np.float32), 4, 16, method="hlq")
    new = rechoose_codes(w, torch.eye(40), qt, damp=0.0)
    v = code_values(qt.scales, qt.zeros)  # (N, G, 16): exhaustive nearest per weight
    g = np.arange(40) // 16
    best = np.abs(w[:, :, None] - v[:, g, :]).argmin(-1)
    np.testing.assert_array_equal(new.codes, best)
    assert ((new.dequantize() - w) ** 2).sum() < ((qt.dequantize() - w) ** 2).sum()


def test_rechoose_never_raises_the_block_loss_and_is_kept_when_it_helps():
    """Codes fitted to a perturbed weight: re-choosing them on the trained grid lowers the loss and is
    kept; every re-choice step leaves the block loss no higher than before it."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False))
    w = lin[0].weight.detach().clone()
    qt = quant.quantize((w + 0.3 * w.std() * torch.randn_like(w)).numpy(), 4, 16, method="hlq")
    x = torch.randn(16, 8, 64)
    target = lin(x).detach()
    lin[0].weight.data.copy_(torch.from_numpy(qt.dequantize()))
    cfg = FTConfig(epochs=3, batch=4, lr=1e-2, rechoose=True)
    new, info, y = finetune_block(lin, {"0": qt}, x, target, lambda m, b: m(b), cfg, w_float={"0": w})
    assert len(info["rechoose"]) == 3 and info["rechosen"] >= 1
    for before, cand, kept in info["rechoose"]:
        assert kept == (cand < before)
    assert info["kept"] and (new["0"].codes != qt.codes).any()
    fixed, finfo, _ = finetune_block(lin, {"0": qt}, x, target, lambda m, b: m(b), FTConfig(epochs=3, batch=4, lr=1e-2))
    assert info["loss_after"] < finfo["loss_after"]
    ref = torch.nn.functional.linear(x, torch.from_numpy(new["0"].dequantize()))
    assert float(torch.nn.functional.mse_loss(ref, target)) == pytest.approx(info["loss_after"], rel=1e-4)
    with pytest.raises(ValueError, match="w_float"):
        finetune_block(lin, {"0": qt}, x, target, lambda m, b: m(b), cfg)


def test_rechoose_model_is_deterministic_and_round_trips(model, ids, tmp_path):
    knobs = {**FT, "rechoose": True}
    qm = quantize_model(model, 4, 32, "hlq-ft", calib=ids, progress=False, ft=knobs)
    assert len(qm.meta["ft"]["rechosen"]) == 2 and qm.meta["ft"]["rechoose"] is True
    again = quantize_model(model, 4, 32, "hlq-ft", calib=ids, progress=False, ft=knobs)
    for name, qt in qm.linears.items():
        for f in ("codes", "scales", "zeros"):
            assert getattr(qt, f).tobytes() == getattr(again.linears[name], f).tobytes()
    quant.save_checkpoint(qm, tmp_path / "ck")
    back = quant.load_checkpoint(tmp_path / "ck")
    assert back.meta["ft"]["rechoose"] is True
    assert logits_err(model, back, ids) == logits_err(model, qm, ids)


def test_cosine_schedule_lowers_the_loss_and_decays_to_zero(monkeypatch):
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(32, 24, bias=False))
    qt = quant.quantize(lin[0].weight.detach().numpy(), 2, 16, method="hlq")
    x = torch.randn(8, 4, 32)
    target = lin(x).detach()
    lrs = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    cfg = FTConfig(epochs=4, batch=2, lr=1e-2, schedule="cosine")
    _, info, _ = finetune_block(lin, {"0": qt}, x, target, lambda m, b: m(b), cfg)
    assert info["kept"] and info["loss_after"] < info["loss_before"] and info["steps"] == 16
    assert lrs[0] == pytest.approx(1e-2) and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 1e-3


def test_a_failed_block_is_retried_at_a_lower_lr():
    """An lr that overshoots: with retries=0 the block keeps its start; with retries the attempt is
    repeated from the start at lr/4, lr/16, ... until the fp16-rounded loss falls."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False))
    qt = quant.quantize(lin[0].weight.detach().numpy(), 2, 16, method="hlq")
    x = torch.randn(16, 8, 64)
    target = lin(x).detach()
    lin[0].weight.data.copy_(torch.from_numpy(qt.dequantize()))
    run = lambda m, b: m(b)  # noqa: E731
    _, info0, y0 = finetune_block(lin, {"0": qt}, x, target, run, FTConfig(epochs=2, batch=4, lr=3.0, retries=0))
    assert not info0["kept"] and info0["retries"] == 0 and info0["steps"] == 8
    new, info, y = finetune_block(lin, {"0": qt}, x, target, run, FTConfig(epochs=2, batch=4, lr=3.0, retries=5))
    assert info["kept"] and 1 <= info["retries"] <= 5 and info["steps"] == 8 * (info["retries"] + 1)
    assert info["loss_after"] < info["loss_before"] == info0["loss_before"]
    ref = torch.nn.functional.linear(x, torch.from_numpy(new["0"].dequantize()))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_rel_block_loss_weighs_every_token_alike():
    """block_loss "rel": each token's squared error over its target's squared norm, averaged; scaling one
    token (an attention sink's huge residual) in both output and target leaves it unchanged, unlike "mse"."""
    from quant.finetune import block_loss
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 5, 8, generator=g)
    y = t + 0.1 * torch.randn(3, 5, 8, generator=g)
    ref = np.mean([float(((y[i, j] - t[i, j]) ** 2).sum() / (t[i, j] ** 2).sum()) for i in range(3) for j in range(5)])
    assert float(block_loss(y, t, "rel")) == pytest.approx(ref, rel=1e-5)
    assert float(block_loss(y, t, "mse")) == pytest.approx(float(((y - t) ** 2).mean()), rel=1e-6)
    scale = torch.ones(1, 5, 1)
    scale[0, 0] = 100.0  # the first position 100x larger, as a sink token's residual
    assert float(block_loss(y * scale, t * scale, "rel")) == pytest.approx(ref, rel=1e-5)
    assert float(block_loss(y * scale, t * scale, "mse")) > 100 * float(block_loss(y, t, "mse"))


def test_finetune_block_with_the_rel_loss_lowers_it():
    from quant.finetune import block_loss
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False))
    qt = quant.quantize(lin[0].weight.detach().numpy(), 2, 16, method="hlq")
    x = torch.randn(16, 8, 64)
    x[:, 0] *= 50  # a sink-like first position
    target = lin(x).detach()
    new, info, y = finetune_block(lin, {"0": qt}, x, target, lambda m, b: m(b),
                                  FTConfig(epochs=4, batch=4, lr=1e-2, block_loss="rel"))
    assert info["kept"] and info["loss_after"] < 0.95 * info["loss_before"]
    ref = torch.nn.functional.linear(x, torch.from_numpy(new["0"].dequantize()))
    assert float(block_loss(ref, target, "rel")) == pytest.approx(info["loss_after"], rel=1e-4)


def test_mix_calibration_takes_windows_round_robin_from_every_text():
    from _quant_fixtures import byte_tokenizer
    from quant.calib import MIX, calibration_ids, mix_corpus, tokenize
    tok = byte_tokenizer()
    texts = [bytes(tokenize(tok, t).tolist()) for _, t in mix_corpus()]  # token ids < 256 as bytes
    assert len(texts) == 3 and all(len(t) > 10_000 for t in texts)
    ids, source = calibration_ids(tok, MIX, 7, 64, seed=5)
    assert source == MIX and ids.shape == (7, 64)
    for j, w in enumerate(ids.tolist()):
        assert bytes(w) in texts[j % 3]
    again, _ = calibration_ids(tok, MIX, 7, 64, seed=5)
    assert torch.equal(ids, again) and not torch.equal(ids, calibration_ids(tok, MIX, 7, 64, seed=6)[0])
    # the pydoc part is the corpus without its held-out 15%
    from quant.calib import builtin_corpus, corpus_split
    assert mix_corpus()[0][1] == corpus_split(builtin_corpus())[0]


def test_ft_calib_is_the_default_calibration_text(model, monkeypatch):
    """FTConfig calib (BITS_DEFAULTS) picks the calibration text when quantize_model gets none; an explicit
    calib wins."""
    import quant.finetune as qf
    from _quant_fixtures import byte_tokenizer
    from quant.calib import MIX
    monkeypatch.setitem(qf.BITS_DEFAULTS, 4, {"calib": MIX, "e2e_epochs": 0})
    kw = dict(tokenizer=byte_tokenizer(), nsamples=3, seqlen=32, progress=False, ft={"samples": 2, "epochs": 1})
    qm = quantize_model(model, 4, 32, "hlq-ft", **kw)
    assert qm.meta["calibration"]["source"] == MIX and qm.meta["ft"]["calib"] == MIX
    assert quantize_model(model, 3, 32, "hlq-ft", **kw).meta["calibration"]["source"] == "builtin:pydoc-topics"
    assert quantize_model(model, 4, 32, "hlq-ft", calib=token_ids(3, 32), progress=False,
                          ft={"samples": 2, "epochs": 1}).meta["calibration"]["source"] == "token ids"


def test_bits_defaults_apply_and_knobs_override(monkeypatch):
    import quant.finetune as qf
    monkeypatch.setitem(qf.BITS_DEFAULTS, 4, {"epochs": 5, "schedule": "cosine"})
    assert FTConfig.for_bits(4).epochs == 5 and FTConfig.for_bits(4).schedule == "cosine"
    assert FTConfig.for_bits(4, epochs=1).epochs == 1 and FTConfig.for_bits(3).epochs == FTConfig().epochs


def test_w4_defaults_include_the_e2e_pass_except_when_streaming(model, ids, tmp_path):
    from quant.finetune import BITS_DEFAULTS
    qm = quantize_model(model, 4, 32, "hlq-ft", calib=ids, progress=False, ft={"samples": 4})
    ft = qm.meta["ft"]
    assert {k: ft[k] for k in BITS_DEFAULTS[4]} == BITS_DEFAULTS[4] and ft["e2e_epochs"] == 2 and "e2e" in ft
    streamed = quantize_model(model, 4, 32, "hlq-ft", calib=ids, progress=False, ft={"samples": 4},
                              offload_dir=tmp_path / "codes")
    assert streamed.meta["ft"]["e2e_epochs"] == 0 and "e2e" not in streamed.meta["ft"]
    assert quantize_model(model, 3, 32, "hlq-ft", calib=ids, progress=False,
                          ft={"samples": 4}).meta["ft"]["e2e_epochs"] == 0
