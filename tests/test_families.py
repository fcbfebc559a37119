"""Every supported model family, token by token against transformers: a tiny random model built from
the family's config class, RTN-quantized; greedy tokens with exact (float32) tables equal
transformers' on the dequantized weights, single-stream and batched."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import quant  # noqa: E402
from runtime import LeanDecoder, UnsupportedModelError  # noqa: E402
from runtime._testing import (FAMILY_CONFIGS, dequantized_hf, hf_greedy, quantize_hf, runtime_greedy,  # noqa: E402
                              tiny_family)
from runtime.scheduler import BatchScheduler  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from runtime._testing import CharTokenizer  # noqa: E402

PROMPTS = [[1, 5, 7, 9, 33, 100], [1, 200, 3], [1, 17, 17, 17, 42, 250, 3, 99, 128, 64, 12]]
N = 20                        # generated tokens: prompts + N run well past the sliding windows of 8


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def family(request):
    model = tiny_family(request.param, seed=11)
    qm = quantize_hf(model, 4, 64)
    ref = dequantized_hf(model, qm)
    return request.param, model, qm, ref


def test_greedy_equals_transformers(family):
    name, _, qm, ref = family
    dec = LeanDecoder(qm, n_ctx=64, threads=2, lut_dtype="float32", max_prefill=8)
    for ids in PROMPTS:
        assert runtime_greedy(dec, ids, N) == hf_greedy(ref, ids, N), (name, ids)


def test_batched_equals_transformers(family):
    name, _, qm, ref = family
    dec = LeanDecoder(qm, n_ctx=64, threads=2, lut_dtype="float32", max_prefill=16, slots=3)
    sched = BatchScheduler(dec, CharTokenizer(), prefill_chunk=4, eos_ids=[])
    reqs = [sched.submit(p, SamplingParams(max_tokens=N)) for p in PROMPTS]
    for _ in range(200):
        if all(r.finish_reason for r in reqs):
            break
        sched.step()
    assert [r.tokens for r in reqs] == [hf_greedy(ref, p, N) for p in PROMPTS], name


def test_pack_cache_roundtrip(family, tmp_path):
    from runtime import packcache
    _, _, qm, ref = family
    dec = LeanDecoder(qm, n_ctx=64, threads=1, lut_dtype="float32", max_prefill=8)
    packcache.save(dec.to_packed_model(), tmp_path / "p")
    again = LeanDecoder(packcache.load(tmp_path / "p"), n_ctx=64, threads=1, lut_dtype="float32", max_prefill=8)
    assert runtime_greedy(again, PROMPTS[0], 8) == runtime_greedy(dec, PROMPTS[0], 8)


REFUSE = [(dict(model_type="qwen2_moe", architectures=["Qwen2MoeForCausalLM"]), "mixture-of-experts"),
          (dict(model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"]), "multimodal"),
          (dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], use_sliding_window=True), "use_sliding_window"),
          (dict(model_type="llama", architectures=["LlamaForCausalLM"], mlp_bias=True), "mlp_bias"),
          (dict(model_type="phi3", architectures=["Phi3ForCausalLM"],
                rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}), "longrope"),
          (dict(model_type="phi3", architectures=["Phi3ForCausalLM"],
                rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5}), "partial_rotary_factor"),
          (dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"], hidden_activation="relu"), "relu"),
          (dict(model_type="falcon", architectures=["FalconForCausalLM"]), "falcon")]


@pytest.mark.parametrize("change,feature", REFUSE, ids=[f for _, f in REFUSE])
def test_unsupported_variants_name_the_feature(change, feature):
    from runtime._testing import llama_config, random_qmodel
    qm = random_qmodel(llama_config(vocab=64, hidden=64, ffn=128, layers=1, heads=2, kv_heads=1), group_size=64)
    bad = quant.QuantizedModel(config={**qm.config, **change}, linears=qm.linears, tensors=qm.tensors)
    with pytest.raises(UnsupportedModelError, match=feature):
        LeanDecoder(bad)


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_lutc_quantize_from_hf_dir(name, tmp_path):
    """`lutc quantize DIR` (quant.quantize_model with calibration) then the decoder: equal to transformers
    on the checkpoint's dequantized weights."""
    import numpy as np
    from transformers import AutoModelForCausalLM
    model = tiny_family(name, seed=3)
    model.save_pretrained(tmp_path / "hf")
    qm = quant.quantize_model(str(tmp_path / "hf"), 4, group_size=64, method="hlq-gptq", progress=False,
                              calib=np.random.default_rng(0).integers(3, 255, (4, 32)), nsamples=4, seqlen=32,
                              lm_head_group_size=64, rounds=2)
    quant.save_checkpoint(qm, str(tmp_path / "q"))
    qm = quant.load_checkpoint(str(tmp_path / "q"))
    ref = dequantized_hf(AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32,
                                                              attn_implementation="eager").eval(), qm)
    dec = LeanDecoder(qm, n_ctx=64, threads=1, lut_dtype="float32", max_prefill=8)
    assert runtime_greedy(dec, PROMPTS[2], 12) == hf_greedy(ref, PROMPTS[2], 12)
