"""Streaming quantization: a model whose float weights exceed the memory it is given (quant.synthetic,
SafetensorsFile, quantize_model(offload_dir=...)), measured in a child process under an RssAnon limit."""

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

from _quant_fixtures import token_ids

from quant.model_quant import quantize_model
from quant.source import SafetensorsFile
from quant.synthetic import write_synthetic_llama

_BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "bench_stream.py")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_stream", _BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_streams_under_a_proportional_limit(tmp_path):
    """LLaMA-2-7B is 13.5 GB of F16 under an 8 GB limit; here 97 MB of F16 (194 MB as float32)
    gets 8/13.5 of its F16 size above the interpreter's baseline (after importing torch/transformers)."""
    d = tmp_path / "model"
    size = write_synthetic_llama(d, hidden=512, inter=1376, layers=16, heads=8, kv_heads=8, vocab=512)
    limit_delta = int(size * 8 / 13.5)
    bench = _bench()
    r = bench.run_limited(d, "rtn", 2, 64, limit_delta=limit_delta, offload=tmp_path / "codes")
    assert r["returncode"] == 0, r
    assert r["linears"] == 16 * 7 + 1
    assert r["peak_rss_anon"] - r["baseline_rss_anon"] < limit_delta
    # and the limit bites: 1/20 of the weights is not enough
    low = bench.run_limited(d, "rtn", 2, 64, limit_delta=size // 20, offload=tmp_path / "codes2")
    assert low["returncode"] == bench.LIMIT_EXIT, low


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("method", ["hlq", "hlq-gptq"])
def test_hlq_streams_under_the_proportional_limit(tmp_path, method):
    """The same model and limit with the HLQ fit (its row-chunk temporaries and threads on top of rtn),
    and with hlq-gptq (8 x 128 calibration tokens; activations in scratch files, quant.actstore).
    Measured +42-50 MB (hlq) and +56-59 MB (hlq-gptq) against the +60.6 MB limit (docs/quantization.md)."""
    d = tmp_path / "model"
    size = write_synthetic_llama(d, hidden=512, inter=1376, layers=16, heads=8, kv_heads=8, vocab=512)
    limit_delta = int(size * 8 / 13.5)
    r = _bench().run_limited(d, method, 2, 64, limit_delta=limit_delta, offload=tmp_path / "codes")
    assert r["returncode"] == 0, r
    assert r["peak_rss_anon"] - r["baseline_rss_anon"] < limit_delta
    assert r["linears"] == 16 * 7 + 1
    assert not [f for f in os.listdir(tmp_path / "codes") if f.startswith(".act-")]  # scratch files gone


def test_safetensors_streaming_matches_in_memory(tmp_path):
    from transformers import AutoModelForCausalLM
    d = tmp_path / "model"
    write_synthetic_llama(d, hidden=64, inter=96, layers=2, heads=4, kv_heads=2, vocab=256, std=0.05)
    ids = token_ids(4, 32)
    streamed = quantize_model(str(d), 2, 32, "hlq-gptq", calib=ids, progress=False, offload_dir=tmp_path / "c")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    ref = quantize_model(model, 2, 32, "hlq-gptq", calib=ids, progress=False)
    assert set(streamed.linears) == set(ref.linears)
    for name, qt in streamed.linears.items():
        assert isinstance(qt.codes, np.memmap)
        np.testing.assert_array_equal(np.asarray(qt.codes), ref.linears[name].codes)
        np.testing.assert_array_equal(qt.scales, ref.linears[name].scales)


def test_safetensors_file_reads_every_dtype(tmp_path):
    from safetensors.torch import save_file
    tensors = {"a": torch.randn(3, 5).half(), "b": torch.randn(7).bfloat16(), "c": torch.arange(6).reshape(2, 3),
               "d": torch.randn(2, 2), "e": torch.zeros(0, 4)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"k": "v"})
    f = SafetensorsFile(str(tmp_path / "x.safetensors"))
    assert set(f.keys()) == set(tensors)
    for k, v in tensors.items():
        assert torch.equal(f.get_tensor(k), v), k
    (tmp_path / "bad.safetensors").write_bytes(b"\x05")
    with pytest.raises(ValueError, match="truncated header"):
        SafetensorsFile(str(tmp_path / "bad.safetensors"))


_CLI = "import sys; from lutc.cli import main; sys.exit(main())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
def test_cli_quantize_offloaded_under_a_proportional_limit(tmp_path):
    """`lutc quantize --offload-dir` (the 7B run's command, bench_stream.py --llama7b) under the
    RssAnon watchdog at 8/13.5 of the F16 weights above an interpreter that imported the same
    modules; its checkpoint equals the in-memory quantization. 1/20 of the weights above it kills it."""
    from quant.checkpoint import load_checkpoint
    bench = _bench()
    d = tmp_path / "model"
    size = write_synthetic_llama(d, hidden=512, inter=1376, layers=16, heads=8, kv_heads=8, vocab=512)
    base = bench.run_watched([sys.executable, "-c", "import time, torch, transformers, quant.model_quant, lutc.cli; "
                              "from transformers import LlamaForCausalLM; time.sleep(0.5)"], 1 << 40,
                             tmp_path / "base.log")
    cmd = [sys.executable, "-c", _CLI, "quantize", str(d), "--bits", "2", "--group-size", "64", "--method", "rtn",
           "--offload-dir", str(tmp_path / "codes"), "--out", str(tmp_path / "ck"), "--quiet"]
    limit = base["peak_rss_anon"] + int(size * 8 / 13.5)
    r = bench.run_watched(cmd, limit, tmp_path / "q.log")
    assert r["returncode"] == 0 and not r["killed_by_limit"], (r, (tmp_path / "q.log").read_text()[-2000:])
    assert 0 < r["peak_rss_anon"] <= limit
    ck = load_checkpoint(tmp_path / "ck")
    ref = quantize_model(str(d), 2, 64, "rtn", progress=False)
    assert set(ck.linears) == set(ref.linears)
    for name, qt in ref.linears.items():
        np.testing.assert_array_equal(ck.linears[name].codes, qt.codes)
        np.testing.assert_array_equal(ck.linears[name].scales, qt.scales)
    assert cmd[-3:-1] == ["--out", str(tmp_path / "ck")]
    low = bench.run_watched(cmd[:-2] + [str(tmp_path / "ck2"), "--quiet"], base["peak_rss_anon"] + size // 20,
                            tmp_path / "low.log")
    assert low["killed_by_limit"] and low["returncode"] != 0 and not (tmp_path / "ck2").exists(), low


def test_synthetic_gguf_is_the_same_model(tmp_path):
    """write_gguf_from_dir: llama.cpp's layout (q/k rows permuted) of the same weights and tokenizer;
    transformers' GGUF loader (which undoes the permutation) gives the safetensors model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from quant.synthetic import write_gguf_from_dir, write_synthetic_tokenizer
    d = tmp_path / "m"
    write_synthetic_llama(d, hidden=64, inter=96, layers=2, heads=4, kv_heads=2, vocab=1000, std=0.05)
    write_synthetic_tokenizer(d, 1000)
    write_gguf_from_dir(d, d / "m.gguf")
    assert not (d / "m.gguf.tmp").exists()
    a = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf", dtype=torch.float32)
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=0, atol=0)
    text = "def f(x): return x + 1  # the GPL"
    tok, tok_gguf = AutoTokenizer.from_pretrained(d), AutoTokenizer.from_pretrained(d, gguf_file="m.gguf")
    assert tok(text).input_ids == tok_gguf(text).input_ids and max(tok(text).input_ids) < 1000
