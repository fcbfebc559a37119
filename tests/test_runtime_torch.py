"""runtime.LUTLinear / quantize_model: torch custom op, outputs vs the dequantized reference, generate()."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import quant  # noqa: E402
import runtime  # noqa: E402
from runtime import LUTLinear, UnsupportedModelError  # noqa: E402
from runtime._testing import dequantized_hf, hf_greedy, quantize_hf, tiny_llama  # noqa: E402


def test_lutlinear_matches_dequantized():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 200)).astype(np.float32)
    qt = quant.quantize(w, 3, 64, method="rtn")
    bias = torch.randn(96)
    lin = LUTLinear(qt, bias=bias, lut_dtype="float32")
    ref = torch.from_numpy(qt.dequantize())
    for shape in [(200,), (1, 200), (5, 200), (2, 3, 200)]:
        x = torch.randn(*shape)
        want = torch.nn.functional.linear(x, ref, bias)
        got = lin(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
    assert lin(torch.randn(0, 200)).shape == (0, 96)
    xb = torch.randn(4, 200, dtype=torch.bfloat16)
    assert lin(xb).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="expected input"):
        lin(torch.randn(3, 7))
    assert "bits=3" in repr(lin)
    assert not any(p.dtype == torch.float32 and p.shape == (96, 200) for p in lin.parameters())


def test_custom_op_registered_and_opcheck():
    qt = quant.quantize(np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32), 4, 128, "rtn")
    lin = LUTLinear(qt)
    assert hasattr(torch.ops.lutc, "lut_linear")
    torch.library.opcheck(torch.ops.lutc.lut_linear.default, (torch.randn(3, 128), lin.w, lin.sz, lin.meta),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("tie", [False, True])
def test_quantize_model_matches_reference_and_generates(tie):
    model = tiny_llama(seed=7, tie=tie)
    qm = quantize_hf(model, 4, 64)
    ref = dequantized_hf(model, qm)
    runtime.replace_linears(model, bits=4, group_size=64, method="rtn", lut_dtype="float32")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears and isinstance(model.lm_head, LUTLinear)
    ids = [1, 9, 40, 41, 200, 3]
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits
        got = model(torch.tensor([ids])).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
    assert hf_greedy(model, ids, 16) == hf_greedy(ref, ids, 16)


def test_quantize_model_rejects_other_architectures():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(UnsupportedModelError):
        runtime.replace_linears(model)
    with pytest.raises(TypeError):
        runtime.replace_linears(object())


def test_lutlinear_survives_dtype_casts_and_state_dict():
    qt = quant.quantize(np.random.default_rng(2).standard_normal((48, 128)).astype(np.float32), 2, 64, "rtn")
    lin = LUTLinear(qt, lut_dtype="float32")
    x = torch.randn(3, 128)
    want = lin(x)
    lin.half()                                    # packed buffers are integer: untouched
    torch.testing.assert_close(lin(x.half()).float(), want, rtol=1e-2, atol=1e-2)
    other = LUTLinear(quant.quantize(np.zeros((48, 128), np.float32), 2, 64, "rtn"), lut_dtype="float32")
    other.load_state_dict(lin.state_dict())
    torch.testing.assert_close(other(x), want)
