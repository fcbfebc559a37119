"""Lean runtime on a small synthetic LLaMA: tokens and logits vs transformers, sampling, generation, errors."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from runtime import LeanDecoder, SamplingParams, Sampler, UnsupportedModelError, generate  # noqa: E402
from runtime._testing import (CharTokenizer, dequantized_hf, hf_greedy, quantize_hf, random_qmodel, llama_config,  # noqa: E402
                              runtime_greedy, tiny_llama)

PROMPTS = [[1, 5, 7, 9, 33, 100], [1, 200], [1, 17, 17, 17, 42, 250, 3, 99, 128, 64, 12]]


@pytest.fixture(scope="module", params=[(4, False, "native"), (2, True, "native"), (3, False, "numpy")],
                ids=["w4-untied-native", "w2-tied-native", "w3-numpy"])
def setup(request):
    bits, tie, engine = request.param
    model = tiny_llama(seed=bits, tie=tie)
    qm = quantize_hf(model, bits, 64)
    ref = dequantized_hf(model, qm)
    dec = LeanDecoder(qm, n_ctx=96, threads=2, lut_dtype="float32", max_prefill=16, engine=engine)
    return model, qm, ref, dec


def _ref_logits(ref, ids):
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].numpy()


# Tolerance: with float32 tables the runtime and torch evaluate the same dequantized weights and
# differ only in float32 summation order (LUT partial sums per group, then scales). The error of a
# K-term float32 dot product is bounded by ~K * eps * sum|x*w|; over 2 layers and K <= 320 that is
# far below 1e-4 of the logit range, which is what we require.
def _tol(ref_logits):
    return 1e-4 * float(np.abs(ref_logits).max()) + 1e-5


def test_greedy_tokens_match_transformers(setup):
    _, _, ref, dec = setup
    for ids in PROMPTS:
        assert runtime_greedy(dec, ids, 32) == hf_greedy(ref, ids, 32)


def test_prefill_logits_match(setup):
    _, _, ref, dec = setup
    ids = PROMPTS[2] + PROMPTS[0] * 2            # 23 tokens: two prefill chunks of <= 16
    want = _ref_logits(ref, ids)
    dec.reset()
    got = dec.prefill(ids, all_logits=True)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=_tol(want))


def test_decode_logits_match_prefill(setup):
    _, _, ref, dec = setup
    ids = PROMPTS[0]
    want = _ref_logits(ref, ids)
    dec.reset()
    rows = [dec.prefill(ids[:2])] + [dec.decode(t).copy() for t in ids[2:]]
    np.testing.assert_allclose(np.stack(rows[1:]), want[2:], rtol=0, atol=_tol(want))
    np.testing.assert_allclose(rows[0], want[1], rtol=0, atol=_tol(want))


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}], ids=["llama3", "linear"])
def test_rope_scaling_and_mha(rope):
    """RoPE scaling from the config; head_dim 128 and as many kv heads as heads (plain MHA)."""
    model = tiny_llama(seed=1, heads=2, kv_heads=2, hidden=256, rope_parameters=rope)
    qm = quantize_hf(model, 4, 64)
    ref = dequantized_hf(model, qm)
    dec = LeanDecoder(qm, n_ctx=128, threads=1, lut_dtype="float32")
    ids = list(range(1, 90))                     # past original_max_position_embeddings
    want = _ref_logits(ref, ids)
    np.testing.assert_allclose(dec.prefill(ids, all_logits=True), want, rtol=0, atol=_tol(want))


@pytest.mark.parametrize("lut_dtype,rms_tol", [("int8", 0.08), ("float16", 0.005)])
def test_low_precision_tables_close(lut_dtype, rms_tol):
    """int8 tables round every table entry to 1/127 of the group's largest subset sum: each lookup
    is off by up to half a step, so logits carry a few percent of relative RMS error (measured
    4-5% on this model). fp16 tables keep 11 bits: about 0.1%."""
    model = tiny_llama(seed=3)
    qm = quantize_hf(model, 4, 64)
    ref = dequantized_hf(model, qm)
    dec = LeanDecoder(qm, n_ctx=32, threads=1, lut_dtype=lut_dtype)
    want = _ref_logits(ref, PROMPTS[0])
    got = dec.prefill(PROMPTS[0], all_logits=True)
    rel_rms = np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean())
    assert rel_rms < rms_tol
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.995


def test_random_model_shapes_run():
    cfg = llama_config(vocab=512, hidden=256, ffn=512, layers=2, heads=4, kv_heads=1)
    dec = LeanDecoder(random_qmodel(cfg, bits=3, group_size=128), n_ctx=16, threads=1)
    out = dec.prefill([1, 2, 3])
    assert out.shape == (512,) and np.isfinite(out).all()
    assert dec.weight_bytes > 0


# ---------------------------------------------------------------------------------- errors
def test_bad_inputs(setup):
    _, qm, _, dec = setup
    dec.reset()
    with pytest.raises(ValueError, match="empty prompt"):
        dec.prefill([])
    with pytest.raises(ValueError, match="prompt too long"):
        dec.prefill(list(range(1, 98)))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        dec.prefill([1, 10**6])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            LeanDecoder(qm, threads=bad)


def test_unsupported_architecture(setup):
    _, qm, _, _ = setup
    import quant
    for change in (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), dict(attention_bias=True),
                   dict(hidden_act="gelu"), dict(rope_parameters={"rope_type": "yarn", "factor": 2.0})):
        bad = quant.QuantizedModel(config={**qm.config, **change}, linears=qm.linears, tensors=qm.tensors)
        with pytest.raises(UnsupportedModelError, match="unsupported"):
            LeanDecoder(bad)
    missing = quant.QuantizedModel(config=qm.config, linears={}, tensors=qm.tensors)
    with pytest.raises(UnsupportedModelError, match="missing"):
        LeanDecoder(missing)


# ---------------------------------------------------------------------------------- sampling
def test_sampler_greedy_and_seeded():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(1000).astype(np.float32)
    assert Sampler(SamplingParams())(logits) == int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=1.0, top_k=1, seed=1))(logits) == int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=1.0, top_p=1e-6, seed=1))(logits) == int(np.argmax(logits))
    p = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=123)
    a = [Sampler(p)(logits) for _ in range(3)]
    s = Sampler(p)
    b = [s(logits) for _ in range(20)]
    assert a[0] == a[1] == a[2] == b[0]
    top50 = set(np.argsort(-logits)[:50].tolist())
    assert set(b) <= top50 and len(set(b)) > 1


def test_sampler_top_p_mass():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.75, seed=0))
    draws = {s(logits) for _ in range(200)}
    assert draws == {0, 1}


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                                dict(max_tokens=-1), dict(stop=("",))])
def test_sampling_params_validate(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


# ---------------------------------------------------------------------------------- generation


def test_generate_stops(setup):
    _, _, ref, dec = setup
    tok = CharTokenizer()
    prompt = "hello"
    greedy = hf_greedy(ref, tok.encode(prompt), 12)
    pieces = []
    res = generate(dec, tok, prompt, SamplingParams(max_tokens=12), stream=pieces.append, eos_ids=[])
    assert res.tokens == greedy and res.stop_reason == "length"
    assert "".join(pieces) == res.text == tok.decode(greedy)
    assert res.prefill_s > 0 and res.decode_steps == 11
    # EOS: declare the 4th greedy token an end-of-sequence token
    res = generate(dec, tok, prompt, SamplingParams(max_tokens=12), eos_ids=[greedy[3]])
    assert res.stop_reason == "eos" and res.tokens == greedy[:greedy.index(greedy[3])]
    # stop string: the text of greedy tokens 2..3
    text = tok.decode(greedy)
    stop = tok.decode(greedy[2:4])
    if stop and stop in text:
        pieces = []
        res = generate(dec, tok, prompt, SamplingParams(max_tokens=12, stop=(stop,)), stream=pieces.append,
                       eos_ids=[])
        assert res.stop_reason == "stop" and res.text == text[:text.find(stop)]
        assert "".join(pieces) == res.text
    with pytest.raises(ValueError, match="empty prompt"):
        generate(dec, tok, "", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="prompt too long"):
        generate(dec, tok, "x" * 200, SamplingParams(max_tokens=2))


def test_cli_rejects_bad_args(capsys):
    from lutc.cli import main
    assert main(["generate", "smollm2-135m", "--prompt", "hi", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    assert main(["generate", "smollm2-135m", "--prompt", "  "]) == 2
    assert "empty prompt" in capsys.readouterr().err
    assert main(["generate", "/nonexistent/ckpt", "--prompt", "hi"]) == 2
    assert "neither a quantized checkpoint" in capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny quantized checkpoint (quant.save_checkpoint) with a small byte-level BPE tokenizer."""
    import quant
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    root = tmp_path_factory.mktemp("ckpt")
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["hello world, the lookup table"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(root / "tok")
    model = tiny_llama(seed=11, vocab=300)
    qm = quantize_hf(model, 4, 64)
    qm.tokenizer_dir = str(root / "tok")
    return quant.save_checkpoint(qm, str(root / "w4"))


def test_cli_generate_from_checkpoint(checkpoint, capsys):
    from lutc.cli import main
    assert main(["generate", checkpoint, "--prompt", "hello world", "--max-tokens", "8", "--threads", "1"]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip()
    assert "prefill" in cap.err and "decode" in cap.err and "tok/s" in cap.err and "peak RSS" in cap.err
    assert main(["generate", checkpoint, "--prompt", "hello", "--max-tokens", "4", "--temperature", "0.8",
                 "--top-k", "20", "--top-p", "0.9", "--seed", "1", "--stop", "zz"]) == 0


def test_cli_rejects_unsupported_checkpoint(checkpoint, tmp_path, capsys):
    import quant
    from lutc.cli import main
    qm = quant.load_checkpoint(checkpoint)
    qm.config = dict(qm.config, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    bad = quant.save_checkpoint(qm, str(tmp_path / "gpt2"))
    assert main(["generate", bad, "--prompt", "hello", "--max-tokens", "2"]) == 2
    assert "unsupported architecture: model_type='gpt2'" in capsys.readouterr().err
    long = "hello world " * 600
    assert main(["generate", checkpoint, "--prompt", long, "--max-tokens", "2", "--ctx", "64"]) == 2
    assert "prompt too long" in capsys.readouterr().err


def test_pack_cache(checkpoint, tmp_path, monkeypatch):
    """A second start memory-maps the packed weights; a broken cache is ignored and rewritten."""
    from runtime import packcache
    from runtime.models import load_decoder
    monkeypatch.setenv("LUTC_CACHE_DIR", str(tmp_path))
    first, tok = load_decoder(checkpoint, threads=1, lut_dtype="float32")
    cache = packcache.cache_path(checkpoint, "float32")
    assert (cache / "meta.json").is_file() and tok is not None
    second, _ = load_decoder(checkpoint, threads=1, lut_dtype="float32")
    assert second.meta.get("pack_cache") == str(cache)
    ids = [1, 5, 9, 200]
    want = first.prefill(ids, all_logits=True)
    np.testing.assert_array_equal(second.prefill(ids, all_logits=True), want)
    (cache / "weights.bin").write_bytes(b"broken")
    third, _ = load_decoder(checkpoint, threads=1, lut_dtype="float32")
    assert "pack_cache" not in third.meta
    np.testing.assert_array_equal(third.prefill(ids, all_logits=True), want)
    assert packcache.load(cache).packed["lm_head"].N == 300     # rewritten


def test_pack_cache_is_keyed_by_layout(checkpoint, tmp_path, monkeypatch, capsys):
    """Packs of two layouts never share a folder (the default layout is part of the key, as are the
    layout knobs a caller passes), and a pack of another layout found in a folder (e.g. 32-row tiles
    where the default is now 64) is refused and rebuilt in the layout the decoder runs."""
    import shutil
    from lutc.ops import default_layout
    from runtime import packcache
    from runtime.models import load_decoder
    monkeypatch.setenv("LUTC_CACHE_DIR", str(tmp_path))
    bn = default_layout("host")["bn"]
    other = 96 - bn                                    # 32 <-> 64
    assert packcache.cache_path(checkpoint) != packcache.cache_path(checkpoint, knobs={"bn": other})
    assert packcache.cache_path(checkpoint) == packcache.cache_path(checkpoint, knobs={"bn": bn, "lut_pair": False})
    dflt, _ = load_decoder(checkpoint, threads=1)
    odd, _ = load_decoder(checkpoint, threads=1, knobs={"bn": other})
    home, away = packcache.cache_path(checkpoint), packcache.cache_path(checkpoint, knobs={"bn": other})
    assert {p.layout_key[3] for p in packcache.load(home).packed.values()} == {bn}
    assert {p.layout_key[3] for p in packcache.load(away).packed.values()} == {other}
    ids = [1, 5, 9, 200]
    want = dflt.prefill(ids, all_logits=True)
    shutil.rmtree(home)
    shutil.copytree(away, home)                        # a stale pack of the other layout under the default key
    capsys.readouterr()
    again, _ = load_decoder(checkpoint, threads=1)
    assert "ignoring pack cache" in capsys.readouterr().err and "pack_cache" not in again.meta
    np.testing.assert_array_equal(again.prefill(ids, all_logits=True), want)
    assert {p.layout_key[3] for p in packcache.load(home).packed.values()} == {bn}     # rewritten
    np.testing.assert_allclose(odd.prefill(ids, all_logits=True), want, rtol=1e-4, atol=1e-4)


def test_example_generate_script(checkpoint, tmp_path, monkeypatch, capsys):
    import importlib.util
    import pathlib
    monkeypatch.setenv("LUTC_CACHE_DIR", str(tmp_path))
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "generate.py"
    spec = importlib.util.spec_from_file_location("example_generate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([checkpoint, "--prompt", "hello", "--max-tokens", "6", "--threads", "1"]) == 0
    assert "decode" in capsys.readouterr().err


def test_auto_threads(setup):
    _, _, ref, dec = setup
    if dec.engine != "native":
        pytest.skip("auto threads is a native-engine feature")
    ids = PROMPTS[0]
    want = runtime_greedy(dec, ids, 40)
    dec.set_threads("auto")
    try:
        assert runtime_greedy(dec, ids, 40) == want          # the thread count never changes results
        assert dec.auto.step >= 39 and dec.threads in dec.auto.options
    finally:
        dec.set_threads(2)
    with pytest.raises(ValueError, match="threads"):
        dec.set_threads("many")
