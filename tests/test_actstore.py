"""quant.actstore: calibration activations in scratch files, the chunked true-sequential GPTQ pass
gives exactly the in-memory quantization, scratch files leave no trace (also on an error)."""

import os

import numpy as np
import pytest
import torch

from _quant_fixtures import tiny_llama, token_ids

from quant import actstore
from quant.actstore import ActStore, _RowParts
from quant.gptq import HessianAccumulator
from quant.model_quant import quantize_model


@pytest.mark.parametrize("sizes", [[5, 7, 1, 19], [32], [1] * 32, [31, 1]])
def test_row_parts_equal_split_adds(sizes):
    """Rows arriving in any sizes reach the accumulator as x.split(rows): the same float sums."""
    x = torch.randn(sum(sizes), 6, generator=torch.Generator().manual_seed(3))
    ref = HessianAccumulator(6)
    for part in x.split(8):
        ref.add(part)
    got = HessianAccumulator(6)
    parts, i = _RowParts(got, 8, x.shape[0]), 0
    for n in sizes:
        parts.add(x[i:i + n])
        i += n
    parts.flush()
    assert got.n == ref.n and torch.equal(got.H, ref.H)


def test_scratch_tensors_are_unlinked_files(tmp_path):
    st = ActStore(tmp_path, chunk_tokens=8)
    x = torch.randn(5, 4, 3)
    t = st.put(x)
    assert torch.equal(t, x) and st.owns(t) and not st.owns(x) and st.put(t) is t
    assert os.listdir(tmp_path) == []  # unlinked at creation: nothing to clean up, even after a kill
    st.drop()
    assert torch.equal(t, x)  # dropped pages come back from the file
    assert st.chunks(x) == [(0, 2), (2, 4), (4, 5)]
    y = st.forward(lambda m, a: a * 2 + m, 1.0, t)
    assert st.owns(y) and torch.equal(y, x * 2 + 1)
    with pytest.raises(ValueError):
        ActStore(tmp_path, chunk_tokens=0)


@pytest.mark.parametrize("method", ["hlq-gptq", "gptq"])
def test_offloaded_activations_give_the_in_memory_codes(tmp_path, monkeypatch, method):
    """Chunks of 2 windows (64 tokens) and Hessian parts of 48 rows (mid-chunk boundaries): exactly
    the codes, scales and zeros of the one-pass in-memory quantization."""
    model, ids = tiny_llama(layers=2), token_ids(6, 32)
    ref = quantize_model(model, 2, 32, method, calib=ids, progress=False)
    monkeypatch.setattr(actstore, "CHUNK_TOKENS", 64)
    got = quantize_model(tiny_llama(layers=2), 2, 32, method, calib=ids, progress=False,
                         offload_dir=tmp_path / "off")
    assert set(got.linears) == set(ref.linears)
    for name, qt in ref.linears.items():
        np.testing.assert_array_equal(np.asarray(got.linears[name].codes), qt.codes, err_msg=name)
        np.testing.assert_array_equal(got.linears[name].scales, qt.scales, err_msg=name)
        np.testing.assert_array_equal(got.linears[name].zeros, qt.zeros, err_msg=name)
    assert got.meta["gptq_loss_total"] == ref.meta["gptq_loss_total"]
    assert not [f for f in os.listdir(tmp_path / "off") if f.startswith(".act-")]


def test_hessian_parts_match_in_memory_split(tmp_path):
    """More tokens than a Hessian part (HESSIAN_ROWS, 8192 in the in-memory pass): parts of 8192
    rows across chunks. 3 x 4096 tokens, a 1-block model."""
    ids = token_ids(3, 4096, seed=2)
    kw = dict(calib=ids, progress=False, lm_head_bits=4)
    ref = quantize_model(tiny_llama(layers=1, hidden=32, inter=48), 2, 32, "gptq", **kw)
    got = quantize_model(tiny_llama(layers=1, hidden=32, inter=48), 2, 32, "gptq", offload_dir=tmp_path, **kw)
    for name, qt in ref.linears.items():
        np.testing.assert_array_equal(np.asarray(got.linears[name].codes), qt.codes, err_msg=name)
        np.testing.assert_array_equal(got.linears[name].scales, qt.scales, err_msg=name)


def test_hlq_ft_offloaded_equals_in_memory(tmp_path, monkeypatch):
    model, ids = tiny_llama(layers=2), token_ids(6, 32)
    ft = {"epochs": 1, "batch": 2, "samples": 4}
    ref = quantize_model(model, 2, 32, "hlq-ft", calib=ids, progress=False, ft=ft)
    monkeypatch.setattr(actstore, "CHUNK_TOKENS", 64)
    got = quantize_model(tiny_llama(layers=2), 2, 32, "hlq-ft", calib=ids, progress=False, ft=ft,
                         offload_dir=tmp_path)
    for name, qt in ref.linears.items():
        np.testing.assert_array_equal(np.asarray(got.linears[name].codes), qt.codes, err_msg=name)
        np.testing.assert_array_equal(got.linears[name].scales, qt.scales, err_msg=name)
        np.testing.assert_array_equal(got.linears[name].zeros, qt.zeros, err_msg=name)
    assert got.meta["ft"]["mse_after"] == ref.meta["ft"]["mse_after"]


def test_error_mid_block_leaves_no_scratch_files(tmp_path, monkeypatch):
    import quant.model_quant as mq
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(*a, **k)

    real = mq.gptq_quantize
    monkeypatch.setattr(mq, "gptq_quantize", boom)
    monkeypatch.setattr(actstore, "CHUNK_TOKENS", 64)
    with pytest.raises(RuntimeError, match="boom"):
        quantize_model(tiny_llama(layers=2), 2, 32, "hlq-gptq", calib=token_ids(4, 32), progress=False,
                       offload_dir=tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".act-")]
