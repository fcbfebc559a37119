"""Tests for quant.quantize_model on tiny LLaMA models: methods, sources, calibration flow, lm_head, progress."""

import numpy as np
import pytest
import torch

from _quant_fixtures import SAMPLE_TEXT, byte_tokenizer, save_hf_dir, tiny_llama, token_ids

import quant
from quant import gptq as gptq_mod
from quant.model_quant import MODEL_METHODS, quantize_model
from quant.torch_model import build_torch_model

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def logits_err(model, qm, ids):
    with torch.no_grad():
        ref = model(ids).logits
        got = build_torch_model(qm)(ids).logits
    return float(((ref - got) ** 2).mean())


@pytest.fixture(scope="module")
def model():
    return tiny_llama(hidden=64, layers=2, inter=96)


@pytest.mark.parametrize("method", MODEL_METHODS)
def test_every_linear_quantized(model, method):
    qm = quantize_model(model, 2, 32, method, calib=token_ids(4, 32), progress=False)
    assert isinstance(qm, quant.QuantizedModel)
    expect = {f"model.layers.{i}.{n}" for i in range(2) for n in LINEARS} | {"lm_head"}
    assert set(qm.linears) == expect
    sd = model.state_dict()
    for name, qt in qm.linears.items():
        assert qt.shape == tuple(sd[name + ".weight"].shape)
        assert (qt.bits, qt.group_size) == ((4, 128) if name == "lm_head" else (2, 32))
        assert qt.method == method
    assert set(qm.tensors) == {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{n}.weight" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")}
    np.testing.assert_array_equal(qm.tensors["model.embed_tokens.weight"], sd["model.embed_tokens.weight"].numpy())
    assert qm.meta["method"] == method and qm.meta["bits"] == 2 and qm.meta["group_size"] == 32
    assert (qm.meta["calibration"] is None) == (method in ("rtn", "hlq"))
    assert qm.config["num_hidden_layers"] == 2 and qm.config["architectures"] == ["LlamaForCausalLM"]


def test_source_model_is_not_modified(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_model(model, 2, 32, "hlq-gptq", calib=token_ids(2, 16), progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_calibrated_methods_beat_plain_ones(model):
    ids, held_out = token_ids(8, 64, seed=3), token_ids(8, 64, seed=4)      # evaluated out of sample
    errs = {m: logits_err(model, quantize_model(model, 3, 32, m, calib=ids, progress=False), held_out)
            for m in ("rtn", "hlq", "gptq", "hlq-gptq")}
    assert errs["gptq"] < errs["rtn"] and errs["hlq-gptq"] < errs["hlq"]
    assert errs["hlq"] < errs["rtn"] and errs["hlq-gptq"] < errs["gptq"]


def test_calibration_runs_through_quantized_linears(model, monkeypatch):
    """Each Hessian comes from inputs produced by the already-quantized linears before it: earlier
    blocks (as GPTQ does) and, true-sequentially, earlier linears of the same block."""
    seen = []
    real = gptq_mod.gptq_quantize

    def spy(w, H, *a, **k):  # quantize_model hands over HessianAccumulators (their H is taken)
        seen.append((H.H if isinstance(H, gptq_mod.HessianAccumulator) else H).clone())
        return real(w, H, *a, **k)
    monkeypatch.setattr("quant.model_quant.gptq_quantize", spy)
    ids = token_ids(4, 32)
    qm = quantize_model(model, 2, 32, "gptq", calib=ids, progress=False)
    assert len(seen) == 2 * 4 + 1  # per block: q/k/v, o, gate/up, down; then lm_head

    fake = build_torch_model(qm)
    inputs = {}
    for i, name in [(1, "model.layers.0.self_attn.o_proj"), (3, "model.layers.0.mlp.down_proj"),
                    (4, "model.layers.1.self_attn.q_proj"), (7, "model.layers.1.mlp.down_proj")]:
        fake.get_submodule(name).register_forward_hook(lambda m, x, o, i=i: inputs.update({i: x[0]}) and None)
    with torch.no_grad():
        fake(ids)
    for i, x in inputs.items():
        x = x.reshape(-1, x.shape[-1])
        torch.testing.assert_close(seen[i], 2 * x.T @ x / x.shape[0], rtol=1e-3, atol=1e-4)


def test_lm_head_bits_flag_and_untied_model():
    m = tiny_llama(tied=False, seed=5)
    qm = quantize_model(m, 3, 32, "hlq-gptq", calib=token_ids(2, 32), lm_head_bits=2, lm_head_group_size=64,
                        progress=False)
    head = qm.linears["lm_head"]
    assert (head.bits, head.group_size) == (2, 64)
    w = m.lm_head.weight.detach().numpy()
    assert np.abs(head.dequantize() - w).max() < np.abs(w).max()  # quantized from lm_head, not embeddings
    assert not np.allclose(m.lm_head.weight.detach(), m.model.embed_tokens.weight.detach())
    assert "lm_head.weight" not in qm.tensors


def test_tied_lm_head_comes_from_embeddings(model):
    qm = quantize_model(model, 2, 32, "rtn", progress=False)
    ref = quant.quantize(model.model.embed_tokens.weight.detach().numpy(), 4, 128, method="rtn")
    np.testing.assert_array_equal(qm.linears["lm_head"].codes, ref.codes)


def test_dead_input_channels_stay_finite():
    m = tiny_llama(dead_inputs=True, seed=2)
    qm = quantize_model(m, 2, 32, "hlq-gptq", calib=token_ids(4, 32), progress=False)
    for name, qt in qm.linears.items():
        assert np.isfinite(qt.dequantize()).all(), name


def test_hf_directory_source_equals_model_source(tmp_path):
    m = save_hf_dir(tmp_path / "hf", seed=7)
    ids = token_ids(4, 32)
    a = quantize_model(m, 3, 32, "hlq-gptq", calib=ids, progress=False)
    b = quantize_model(str(tmp_path / "hf"), 3, 32, "hlq-gptq", calib=ids, progress=False)
    for name in a.linears:
        np.testing.assert_array_equal(a.linears[name].codes, b.linears[name].codes)
        np.testing.assert_array_equal(a.linears[name].scales, b.linears[name].scales)
    assert b.tokenizer_dir == str(tmp_path / "hf") and b.meta["source"] == str(tmp_path / "hf")


def test_calibration_from_text_file(tmp_path):
    m = tiny_llama(seed=4)
    f = tmp_path / "calib.txt"
    f.write_text(SAMPLE_TEXT)
    qm = quantize_model(m, 3, 32, "gptq", calib=str(f), nsamples=4, seqlen=64, tokenizer=byte_tokenizer(),
                        progress=False)
    assert qm.meta["calibration"]["source"] == str(f) and qm.meta["calibration"]["nsamples"] == 4
    assert qm.tokenizer_dir is not None
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(ValueError, match="needs at least seqlen"):
        quantize_model(m, 3, 32, "gptq", calib=str(short), seqlen=64, tokenizer=byte_tokenizer(), progress=False)


def test_progress_goes_to_stderr(model, capsys):
    quantize_model(model, 2, 32, "gptq", calib=token_ids(2, 16), progress=True)
    err = capsys.readouterr().err
    assert "layer 1/2" in err and "layer 2/2" in err and "lm_head" in err and "s)" in err


@pytest.mark.parametrize("kw,match", [
    (dict(bits=5), "bits: expected an int in 1..4"),
    (dict(method="awq"), "method: expected one of"),
    (dict(group_size=0), "group_size"),
    (dict(lm_head_bits=0), "lm_head_bits"),
])
def test_bad_arguments(model, kw, match):
    args = dict(bits=2, group_size=32, method="rtn") | kw
    with pytest.raises(ValueError, match=match):
        quantize_model(model, progress=False, **args)


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="expected 'smollm2-135m', a .gguf file or a Hugging Face model directory"):
        quantize_model(str(tmp_path / "nothing"), 2, 32, "rtn")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        quantize_model(str(tmp_path / "empty"), 2, 32, "rtn")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        quantize_model(tiny_llama(), 2, 32, "gptq", progress=False)
