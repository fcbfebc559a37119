"""Tests for quant.eval and the CLI: sliding-window perplexity, fake-quant vs LUT kernels, the real SmolLM2 model."""

import math
import os

import pytest
import torch

from _quant_fixtures import SAMPLE_TEXT, byte_tokenizer, needs_smollm2, save_hf_dir, tiny_llama, token_ids

from quant.checkpoint import load_checkpoint, save_checkpoint
from quant.eval import evaluate, perplexity, sliding_nll
from quant.model_quant import quantize_model
from quant.torch_model import build_torch_model
from runtime.torch_ops import build_lut_model, lut_linear_factory


@pytest.fixture(scope="module")
def model():
    return tiny_llama(hidden=64, layers=2, inter=96, seed=11)


def full_nll(model, ids):
    with torch.no_grad():
        logits = model(ids[None]).logits[0]
    return float(torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum"))


def test_one_window_equals_full_sequence_nll(model):
    ids = token_ids(1, 200)[0]
    nll, count = sliding_nll(model, ids, window=200, stride=200)
    assert count == 199 and nll == pytest.approx(full_nll(model, ids), rel=1e-5)


@pytest.mark.parametrize("window,stride", [(64, 64), (64, 32), (50, 13), (300, 100)])
def test_sliding_window_scores_every_token_once(model, window, stride):
    ids = token_ids(1, 200)[0]
    nll, count = sliding_nll(model, ids, window=window, stride=stride)
    assert count == (199 if stride < window else 200 - math.ceil(200 / window))
    # tokens inside the first window see the same context as the full pass
    first, _ = sliding_nll(model, ids[:window], window=window, stride=window)
    with torch.no_grad():
        per_token = torch.nn.functional.cross_entropy(model(ids[None]).logits[0, :-1], ids[1:], reduction="none")
    assert first == pytest.approx(float(per_token[:min(window, 200) - 1].sum()), rel=1e-5)
    if (window, stride) == (50, 13):   # brute force, token by token: target t is scored by the first window reaching it
        ref = 0.0
        for t in range(1, 200):
            begin = max(0, math.ceil((t - window + 1) / stride)) * stride
            with torch.no_grad():
                logits = model(ids[None, begin:t]).logits[0, -1]
            ref += float(torch.nn.functional.cross_entropy(logits[None], ids[t:t + 1]))
        assert nll == pytest.approx(ref, rel=1e-4)
    with pytest.raises(ValueError, match="stride"):
        sliding_nll(model, ids, window=16, stride=32)


@pytest.fixture(scope="module")
def qm(model):
    return quantize_model(model, 3, 32, "hlq-gptq", calib=token_ids(4, 64), progress=False)


def test_fake_quant_and_lut_kernels_agree(qm):
    ids = token_ids(1, 160, seed=5)[0]
    kw = dict(tokens=ids, window=64, stride=32)
    fake = evaluate(qm, **kw)["ppl"]
    f32 = evaluate(qm, linear=lut_linear_factory("float32"), **kw)["ppl"]
    i8 = evaluate(qm, linear=lut_linear_factory("int8"), **kw)["ppl"]
    assert abs(f32 / fake - 1) < 1e-3  # float32 tables: same math up to summation order
    assert abs(i8 / fake - 1) < 0.05


def test_lut_linear_matches_fake_linear(qm):
    fake, lut = build_torch_model(qm), build_lut_model(qm, lut_dtype="float32")
    x = torch.randn(3, 5, 64)
    name = "model.layers.1.mlp.gate_proj"
    torch.testing.assert_close(lut.get_submodule(name)(x), fake.get_submodule(name)(x), rtol=1e-4, atol=1e-4)
    assert not any(p.numel() > 64 * 96 - 1 and p.ndim == 2 for n, p in lut.named_parameters()
                   if "embed" not in n)  # no float32 copy of a quantized weight


def test_quantized_close_to_float_at_4_bits(model):
    ids = token_ids(1, 160, seed=6)[0]
    base = perplexity(model, tokens=ids, window=64, stride=32)
    q4 = perplexity(quantize_model(model, 4, 32, "hlq", progress=False), tokens=ids, window=64, stride=32)
    assert abs(q4 / base - 1) < 0.05


def test_checkpoint_dir_and_text_file(tmp_path, qm):
    qm.tokenizer_dir = None
    path = save_checkpoint(qm, tmp_path / "ck")
    assert perplexity(path, tokens=token_ids(1, 80)[0], window=64, stride=32) == pytest.approx(
        perplexity(qm, tokens=token_ids(1, 80)[0], window=64, stride=32), rel=1e-6)
    with pytest.raises(ValueError, match="no tokenizer"):
        evaluate(path)
    text = tmp_path / "t.txt"
    text.write_text(SAMPLE_TEXT)
    r = evaluate(load_checkpoint(path), str(text), tokenizer=byte_tokenizer(), window=128, stride=64, max_tokens=500)
    assert r["tokens"] == 499 and r["source"] == str(text) and r["ppl"] > 1
    with pytest.raises(ValueError, match="cannot read"):
        evaluate(path, str(tmp_path / "missing.txt"), tokenizer=byte_tokenizer())


def test_cli_quantize_then_eval(tmp_path, capsys):
    from lutc.cli import main
    save_hf_dir(tmp_path / "hf", seed=3)
    calib = tmp_path / "calib.txt"
    calib.write_text(SAMPLE_TEXT)
    out = tmp_path / "q"
    rc = main(["quantize", str(tmp_path / "hf"), "--bits", "2", "--group-size", "32", "--method", "hlq-gptq",
               "--out", str(out), "--calib", str(calib), "--nsamples", "4", "--seqlen", "64", "--quiet"])
    assert rc == 0 and (out / "manifest.json").is_file() and (out / "tokenizer").is_dir()
    assert "wrote" in capsys.readouterr().out
    rc = main(["eval", str(out), "--text", str(calib), "--window", "128", "--stride", "64", "--max-tokens", "400",
               "--mode", "all"])
    text = capsys.readouterr().out
    assert rc == 0 and "exact (fake-quant)" in text and "int8 old (group, raw)" in text and "top-1 agree" in text
    rc = main(["eval", str(out), "--text", str(calib), "--window", "128", "--stride", "64", "--max-tokens", "400",
               "--mode", "all", "--blocks", "16", "--json", "--quiet"])
    import json
    rows = {r["label"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rc == 0 and rows["exact (fake-quant)"]["agree"] == 1.0 and rows["exact (fake-quant)"]["tokens"] == 399
    f32 = rows["float32"]                  # exact tables through the native decoder = fake-quant
    assert abs(f32["vs_exact"]) < 1e-4 and f32["agree"] > 0.99 and f32["rel_cost"] > 0
    assert {"default", "float16", "int8 old (group, raw)", "int8 centered, block 16",
            "int8 centered, block 16, ratios <= 64"} <= set(rows)
    assert rows["int8 centered, block 16, ratios <= 64"]["knobs"]["lut_scale_ratio"] == 64
    rc = main(["eval", str(tmp_path / "hf"), "--text", str(calib), "--window", "128", "--max-tokens", "200"])
    assert rc == 0 and "float32: perplexity" in capsys.readouterr().out


def test_cli_errors_are_clean(tmp_path, capsys):
    from lutc.cli import main
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{}")
    assert main(["eval", str(tmp_path / "bad")]) == 2
    assert "not a lutc quantized checkpoint" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "none"), "--bits", "2", "--out", str(tmp_path / "o")]) == 2
    assert "lutc quantize: error:" in capsys.readouterr().err


@pytest.mark.real_model
@needs_smollm2
def test_smollm2_end_to_end(tmp_path):
    """The real SmolLM2-135M: W3 g128 hlq-gptq (short calibration, fewer HLQ rounds, to fit the CI
    budget) beats rtn, survives a checkpoint round trip bit-identically, and fake-quant agrees with
    the float32-table LUT kernels within 1%."""
    from quant.calib import eval_ids
    from quant.source import load_source_model
    src, tok = load_source_model("smollm2-135m")
    assert src.config.num_hidden_layers == 30 and src.config.hidden_size == 576
    ids, _ = eval_ids(tok, None, 768)
    kw = dict(tokens=ids, window=512, stride=256)
    base = perplexity(src, **kw)
    rtn = quantize_model(src, 3, 128, "rtn", tokenizer=tok, progress=False)
    hg = quantize_model(src, 3, 128, "hlq-gptq", tokenizer=tok, nsamples=8, seqlen=256, rounds=6, progress=False)
    del src
    path = save_checkpoint(hg, tmp_path / "smol-w3")
    back = load_checkpoint(path)
    for name in ("model.layers.29.mlp.down_proj", "lm_head"):
        assert back.linears[name].codes.tobytes() == hg.linears[name].codes.tobytes()
    assert back.linears["model.layers.0.self_attn.q_proj"].num_groups == 5  # 576 = 4 * 128 + 64
    assert (back.linears["lm_head"].bits, back.linears["lm_head"].group_size) == (4, 128)
    assert os.path.isdir(os.path.join(path, "tokenizer"))
    p_rtn = perplexity(rtn, **kw)
    p_hg = perplexity(back, **kw)
    assert 1 < base < p_hg < p_rtn, (base, p_hg, p_rtn)
    del rtn, hg
    # W2 g64 on the held-out text (calibration: the corpus' other part): HLQ-GPTQ under half of GPTQ
    src, _ = load_source_model("smollm2-135m")
    w2 = {m: perplexity(quantize_model(src, 2, 64, m, tokenizer=tok, nsamples=4, seqlen=128, rounds=4,
                                       progress=False), **kw) for m in ("gptq", "hlq-gptq")}
    del src
    assert w2["hlq-gptq"] < 0.5 * w2["gptq"], w2
    short = dict(tokens=ids[:256], window=256, stride=256)
    p_fake = perplexity(back, **short)
    p_lut = perplexity(back, linear=lut_linear_factory("float32"), **short)
    assert abs(p_lut / p_fake - 1) < 0.01, (p_lut, p_fake)
