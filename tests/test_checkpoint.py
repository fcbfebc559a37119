"""Tests for quant.checkpoint: bit packing, save/load round trip, corrupt and truncated checkpoints, atomic saves."""

import json
import os
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _quant_fixtures import byte_tokenizer, tiny_llama, token_ids

from quant.checkpoint import (FORMAT_VERSION, MANIFEST, CheckpointError, load_checkpoint, pack_codes,
                              save_checkpoint, unpack_codes)
from quant.model_quant import quantize_model


@pytest.fixture(scope="module")
def qm():
    model = tiny_llama(hidden=48, layers=2, inter=80)
    return quantize_model(model, 3, 32, "hlq-gptq", calib=token_ids(4, 24), progress=False,
                          tokenizer=byte_tokenizer())


@pytest.fixture
def ckpt(qm, tmp_path):
    return save_checkpoint(qm, tmp_path / "ckpt")


def assert_same_model(a, b):
    assert sorted(a.linears) == sorted(b.linears) and sorted(a.tensors) == sorted(b.tensors)
    for name, qa in a.linears.items():
        qb = b.linears[name]
        assert (qa.bits, qa.group_size, qa.shape, qa.method) == (qb.bits, qb.group_size, qb.shape, qb.method)
        for f in ("codes", "scales", "zeros"):
            x, y = getattr(qa, f), getattr(qb, f)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), (name, f)
    for name, t in a.tensors.items():
        assert b.tensors[name].dtype == np.float32 and t.tobytes() == b.tensors[name].tobytes(), name
    assert a.config == b.config


@given(bits=st.integers(1, 4), n=st.integers(1, 9), k=st.integers(1, 70), seed=st.integers(0, 99))
def test_pack_unpack_round_trip(bits, n, k, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (n, k)).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (n, -(-k * bits // 8)) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(packed, bits, k), codes)


def test_pack_layout_is_little_endian_bit_stream():
    codes = np.array([[1, 2, 3, 0, 3]], np.uint8)
    assert pack_codes(codes, 2).tolist() == [[0b00111001, 0b00000011]]
    assert pack_codes(np.array([[5, 12]], np.uint8), 4).tolist() == [[0xC5]]


def test_round_trip_is_bit_identical(qm, ckpt):
    back = load_checkpoint(ckpt)
    assert_same_model(qm, back)
    assert back.meta["method"] == "hlq-gptq" and back.meta["bits"] == 3
    man = _manifest(ckpt)
    assert man["format_version"] == FORMAT_VERSION and man["method"] == "hlq-gptq"
    assert man["linears"]["lm_head"]["bits"] == 4 and man["linears"]["lm_head"]["group_size"] == 128
    assert man["linears"]["model.layers.1.mlp.down_proj"] == {
        "bits": 3, "group_size": 32, "shape": [48, 80], "method": "hlq-gptq", "file": "model.safetensors"}
    assert man["lutc_version"] and man["source"] == qm.meta["source"]
    # codes are bit-packed (3 bits per code), scales and zeros fp16
    from safetensors import safe_open
    with safe_open(os.path.join(ckpt, "model.safetensors"), framework="numpy") as f:
        assert f.get_slice("model.layers.1.mlp.down_proj.qweight").get_shape() == [48, 30]
        assert f.get_slice("lm_head.qweight").get_shape() == [256, 24]
        assert f.get_slice("model.layers.1.mlp.down_proj.scales").get_dtype() == "F16"
        assert f.get_slice("model.layers.1.mlp.down_proj.zeros").get_shape() == [48, 3]
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(back.tokenizer_dir)
    assert tok("hi", add_special_tokens=False)["input_ids"] == byte_tokenizer()("hi", add_special_tokens=False)["input_ids"]
    # the tokenizer is loaded from its folder, so a file the manifest does not list (and hash) is refused
    with open(os.path.join(ckpt, "tokenizer", "added_tokens.json"), "w") as f:
        f.write("{}")
    with pytest.raises(CheckpointError, match=r"not listed in the manifest.*added_tokens.json"):
        load_checkpoint(ckpt)


def test_sharded_round_trip(qm, tmp_path):
    path = save_checkpoint(qm, tmp_path / "sharded", shard_bytes=20_000)
    shards = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    assert len(shards) > 2
    assert_same_model(qm, load_checkpoint(path))


def test_saving_packs_one_shard_at_a_time(qm, tmp_path, monkeypatch):
    """Codes are packed when their shard is written, not all up front: a model whose packed codes
    exceed RAM (memory-mapped offloaded codes) saves with about one shard in memory."""
    import quant.checkpoint as ck
    from safetensors import numpy as stnp
    events, real_pack, real_save = [], ck.pack_codes, stnp.save_file
    monkeypatch.setattr(ck, "pack_codes", lambda *a: events.append("pack") or real_pack(*a))
    monkeypatch.setattr(stnp, "save_file", lambda *a, **k: events.append("save") or real_save(*a, **k))
    path = save_checkpoint(qm, tmp_path / "lazy", shard_bytes=20_000)
    assert events.count("pack") == len(qm.linears) and events.count("save") > 2
    assert events.index("save") < len(events) - 1 - events[::-1].index("pack")  # packing goes on after a save
    assert_same_model(qm, load_checkpoint(path))


def test_loading_never_unpickles(ckpt, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickle used")
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    load_checkpoint(ckpt)


def _manifest(path):
    with open(os.path.join(path, MANIFEST)) as f:
        return json.load(f)


def _write_manifest(path, man):
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(man, f)


def _rewrite_weights(ckpt, edit):
    """Edit the arrays of model.safetensors and keep the manifest's size and hash consistent,
    so that only the content checks can catch the problem."""
    import hashlib
    from safetensors.numpy import load_file, save_file
    f = os.path.join(ckpt, "model.safetensors")
    arrays = load_file(f)
    edit(arrays)
    save_file(arrays, f)
    man = _manifest(ckpt)
    man["files"]["model.safetensors"] = {"bytes": os.path.getsize(f),
                                         "sha256": hashlib.sha256(open(f, "rb").read()).hexdigest()}
    _write_manifest(ckpt, man)


def test_truncated_file_names_the_file(ckpt):
    f = os.path.join(ckpt, "model.safetensors")
    data = open(f, "rb").read()
    open(f, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        load_checkpoint(ckpt)


def test_corrupt_bytes_fail_the_hash(ckpt):
    f = os.path.join(ckpt, "model.safetensors")
    data = bytearray(open(f, "rb").read())
    data[-10] ^= 0xFF
    open(f, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt"):
        load_checkpoint(ckpt)


def test_corrupt_header_without_hash_check_names_the_file(ckpt):
    f = os.path.join(ckpt, "model.safetensors")
    data = bytearray(open(f, "rb").read())
    data[8:16] = b"garbage!"
    open(f, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read tensor"):
        load_checkpoint(ckpt, verify_hashes=False)


def test_missing_tensor_names_file_and_tensor(ckpt):
    _rewrite_weights(ckpt, lambda a: a.pop("model.layers.0.mlp.up_proj.scales"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing tensor 'model\.layers\.0\.mlp\.up_proj\.scales'"):
        load_checkpoint(ckpt)


def test_wrong_shape_names_file_and_tensor(ckpt):
    _rewrite_weights(ckpt, lambda a: a.update({"model.norm.weight": a["model.norm.weight"][:-1].copy()}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.norm\.weight': expected float32 \(48,\)"):
        load_checkpoint(ckpt)


def test_non_finite_scales_are_rejected(ckpt):
    def edit(a):
        a["model.layers.0.self_attn.q_proj.scales"][0, 0, 0] = np.float16(np.inf)
    _rewrite_weights(ckpt, edit)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: linear 'model\.layers\.0\.self_attn\.q_proj': scales: expected finite"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format_version=99), r"unknown format version 99 \(this lutc reads 1\)"),
    (lambda m: m.update(format="something-else"), "not a lutc quantized checkpoint"),
    (lambda m: m["linears"].pop("model.layers.1.self_attn.k_proj"), r"missing quantized linear 'model\.layers\.1\.self_attn\.k_proj'"),
    (lambda m: m["tensors"].pop("model.layers.0.input_layernorm.weight"), r"missing tensor 'model\.layers\.0\.input_layernorm\.weight'"),
    (lambda m: m["linears"]["lm_head"].update(bits=2), r"model\.safetensors: tensor 'lm_head\.qweight': expected uint8"),
    (lambda m: m["files"].update({"extra.bin": {"bytes": 1, "sha256": "0" * 64}}), r"extra\.bin: missing"),
])
def test_bad_manifest(ckpt, edit, match):
    man = _manifest(ckpt)
    edit(man)
    _write_manifest(ckpt, man)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(ckpt)


def test_missing_or_broken_manifest(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope")
    open(os.path.join(ckpt, MANIFEST), "w").write("{not json")
    with pytest.raises(CheckpointError, match=r"manifest\.json: cannot parse manifest"):
        load_checkpoint(ckpt)
    os.remove(os.path.join(ckpt, MANIFEST))
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing manifest"):
        load_checkpoint(ckpt)


def test_failed_save_leaves_nothing_and_keeps_the_old_checkpoint(qm, ckpt, tmp_path, monkeypatch):
    import safetensors.numpy
    before = sorted(os.listdir(tmp_path))

    def fail(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.numpy, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(qm, ckpt)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(qm, tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == before  # no temp dirs, no half checkpoint
    monkeypatch.undo()
    assert_same_model(qm, load_checkpoint(ckpt))
    save_checkpoint(qm, ckpt)  # replacing an existing checkpoint works
    assert sorted(os.listdir(tmp_path)) == before


def test_refuses_to_overwrite_other_directories(qm, tmp_path):
    other = tmp_path / "mydata"
    other.mkdir()
    (other / "important.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a lutc checkpoint"):
        save_checkpoint(qm, other)
    assert (other / "important.txt").read_text() == "keep me"


def test_unloadable_tokenizer_fails_the_save_cleanly(qm, tmp_path):
    import dataclasses
    bad = dataclasses.replace(qm, tokenizer_dir=str(tmp_path / "gone"))
    with pytest.raises(CheckpointError, match="cannot load a tokenizer"):
        save_checkpoint(bad, tmp_path / "ck")
    assert os.listdir(tmp_path) == []
