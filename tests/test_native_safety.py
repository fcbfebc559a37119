"""Issue 13, native memory safety: every Python-level input that could make native code read or
write out of bounds is refused or handled (token ids, pack caches, 32-bit offsets, packed
weights, buffer lifetimes, concurrent decoder calls, plan caches that keep weights alive)."""
import gc
import json
import threading
import weakref

import numpy as np
import pytest

import lutc
import quant
from lutc import Schedule
from lutc.kernels import PackedWeights

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from runtime import LeanDecoder  # noqa: E402
from runtime import packcache  # noqa: E402
from runtime._testing import llama_config, random_qmodel  # noqa: E402


@pytest.fixture(scope="module")
def tiny_qm():
    cfg = llama_config(vocab=64, hidden=64, ffn=96, layers=1, heads=4, kv_heads=2, max_pos=64)
    return random_qmodel(cfg, bits=2, group_size=32, seed=3)


def test_decode_refuses_token_ids_outside_the_vocabulary(tiny_qm):
    for engine in ("native", "numpy"):
        dec = LeanDecoder(tiny_qm, n_ctx=16, threads=1, engine=engine)
        for bad in (64, 10**6, -1, -64, 2.0, True):
            with pytest.raises(ValueError, match="token id|token ids must be ints"):
                dec.decode(bad)
        assert dec.pos == 0                     # nothing ran
        dec.decode(63)
        assert dec.pos == 1


def test_decoder_refuses_a_concurrent_call(tiny_qm):
    dec = LeanDecoder(tiny_qm, n_ctx=16, threads=1)
    assert dec._busy.acquire(blocking=False)    # another thread is mid-step
    try:
        with pytest.raises(RuntimeError, match="another thread"):
            dec.decode(1)
        with pytest.raises(RuntimeError, match="another thread"):
            dec.prefill([1, 2])
    finally:
        dec._busy.release()
    errors, barrier = [], threading.Barrier(4)

    def worker():
        barrier.wait()
        for _ in range(20):
            try:
                dec.decode(1)
            except (RuntimeError, ValueError) as e:     # refused, or the context filled up
                errors.append(type(e).__name__)
    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert dec.pos <= dec.n_ctx                 # never wrote past the KV cache


def _saved_cache(tiny_qm, tmp_path):
    dec = LeanDecoder(tiny_qm, n_ctx=16, threads=1)
    path = packcache.save(dec.to_packed_model(), tmp_path / "pc")
    return dec, path


@pytest.mark.parametrize("edit", [
    lambda m: m["linears"]["lm_head"].__setitem__("N", m["linears"]["lm_head"]["N"] * 4),
    lambda m: m["linears"]["0.qkv"].__setitem__("num_tiles", 1000),
    lambda m: m["arrays"]["0.o.w"].__setitem__("shape", [10**7]),
    lambda m: m["arrays"]["0.o.w"].__setitem__("dtype", "float64"),
    lambda m: m["arrays"]["model.embed_tokens.weight"].__setitem__("shape", [640, 64]),
    lambda m: m.__setitem__("arrays", []),
    lambda m: m.__setitem__("linears", {"lm_head": "x"}),
    lambda m: m["linears"]["lm_head"].__setitem__("layout_key", [2, 32, 4, 48, "chunk"]),
], ids=["N", "num_tiles", "shape", "dtype", "embed-shape", "arrays-list", "linear-str", "layout"])
def test_pack_cache_edits_are_refused(tiny_qm, tmp_path, edit):
    _, path = _saved_cache(tiny_qm, tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    edit(meta)
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError):              # PackCacheError, or the decoder's shape check
        LeanDecoder(packcache.load(path), n_ctx=16, threads=1)


def test_pack_cache_checksum(tiny_qm, tmp_path):
    dec, path = _saved_cache(tiny_qm, tmp_path)
    good = LeanDecoder(packcache.load(path), n_ctx=16, threads=1)
    np.testing.assert_array_equal(good.prefill([1, 2, 3]), dec.prefill([1, 2, 3]))
    blob = bytearray((path / "weights.bin").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (path / "weights.bin").write_bytes(bytes(blob))
    with pytest.raises(packcache.PackCacheError, match="checksum"):
        packcache.load(path)


def test_packed_weights_are_checked_against_the_schedule():
    qw = quant.quantize(np.random.default_rng(0).standard_normal((40, 96)).astype(np.float32), 2, 32)
    k = lutc.compile(Schedule.make(2, 32))
    p = k.pack(qw)
    x = np.ones((1, 96), np.float32)
    bad = [PackedWeights(p.layout_key, p.N, p.K, p.num_groups, p.num_tiles, p.w[:-1], p.sz),
           PackedWeights(p.layout_key, p.N * 3, p.K, p.num_groups, p.num_tiles, p.w, p.sz),
           PackedWeights(p.layout_key, p.N, p.K, p.num_groups, p.num_tiles, p.w, p.sz.astype(np.float32)),
           PackedWeights(p.layout_key, p.N, p.K * 2, p.num_groups, p.num_tiles, p.w, p.sz)]
    for b in bad:
        with pytest.raises(lutc.LaunchError, match="weights"):
            k(np.ones((1, b.K), np.float32), b)
    np.testing.assert_array_equal(k(x, p), k(x, qw))


def test_misaligned_out_is_refused():
    qw = quant.quantize(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32), 2, 32)
    k = lutc.compile(Schedule.make(2, 32))
    raw = np.zeros(8 * 2 + 1, np.float32).view(np.uint8)[1:1 + 8 * 2 * 4].view(np.float32).reshape(2, 8)
    assert raw.ctypes.data % 4
    with pytest.raises(lutc.LaunchError, match="aligned"):
        k(np.ones((2, 64), np.float32), qw, out=raw)


def test_bound_launches_keep_their_buffers_alive():
    @lutc.jit
    def double(a, out, n, BLOCK: lutc.language.constexpr):
        offs = lutc.language.arange(0, BLOCK)
        lutc.language.store(out + offs, lutc.language.load(a + offs, mask=offs < n) * 2.0, mask=offs < n)
    fn = double.compile({"a": "*f32", "out": "*f32", "n": "i32"}, {"BLOCK": 16})
    a, out = np.arange(16, dtype=np.float32), np.zeros(16, np.float32)
    refs = weakref.ref(a), weakref.ref(out)
    launch = fn.bind((1,), [a, out, 16])
    del a, out
    gc.collect()
    assert all(r() is not None for r in refs)   # owned by the launch, not freed under it
    launch(1)
    np.testing.assert_array_equal(refs[1](), np.arange(16, dtype=np.float32) * 2)
    del launch
    gc.collect()
    assert all(r() is None for r in refs)


def test_dropped_weights_are_freed_with_their_plans():
    k = lutc.compile(Schedule.make(2, 64))
    rng = np.random.default_rng(1)
    refs = []
    for _ in range(40):
        qw = quant.quantize(rng.standard_normal((64, 256)).astype(np.float32), 2, 64, method="rtn")
        packed = k.pack(qw)
        k(np.ones((3, 256), np.float32), packed)
        k(np.ones((1, 256), np.float32), qw)
        refs.append(weakref.ref(packed))
        del qw, packed
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_rows_beyond_32_bit_offsets_are_correct():
    """M*NG*TPGP*16 > 2**31: the call is split so every launch's offsets fit in 32 bits."""
    rng = np.random.default_rng(2)
    qw = quant.quantize(rng.standard_normal((16, 4096)).astype(np.float32), 2, 128, method="rtn")
    M = 131073
    x = np.zeros((M, 4096), np.float32)           # untouched pages stay unallocated
    x[0], x[-1] = rng.standard_normal(4096), rng.standard_normal(4096)
    k = lutc.compile(Schedule.make(2, 128))
    y = k(x, qw, threads=2)
    for r in (0, M - 1):
        np.testing.assert_array_equal(y[r], k(x[r:r + 1], qw)[0])      # same kernel on one row
        ref = x[r] @ qw.dequantize().T
        assert np.abs(y[r] - ref).max() < 0.05 * np.abs(ref).max()
    with pytest.raises(lutc.LaunchError, match="32-bit offsets"):
        k.prepare(k.pack(qw), M)


def test_pack_cache_key_covers_the_packing_code(tmp_path, monkeypatch):
    import shutil
    import lutc as lutc_pkg
    src = __import__("pathlib").Path(lutc_pkg.__file__).parent
    fake = tmp_path / "lutc"
    (fake / "kernels").mkdir(parents=True)
    for name in ("packing.py", "spec.py"):
        shutil.copy(src / "kernels" / name, fake / "kernels" / name)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "manifest.json").write_text("{}")
    monkeypatch.setattr(packcache.lutc, "__file__", str(fake / "__init__.py"))
    before = packcache.cache_path(ckpt)
    assert packcache.cache_path(ckpt) == before
    with open(fake / "kernels" / "packing.py", "a") as f:
        f.write("\n# a change to the packed layout code\n")
    assert packcache.cache_path(ckpt) != before


def _mutations():
    from hypothesis import strategies as st
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                        st.text(max_size=8), st.just([]), st.just({}), st.lists(st.integers(-5, 10**6), max_size=3))
    return st.lists(st.tuples(st.integers(0, 10**6), scalars), min_size=1, max_size=4)


def _paths(obj, prefix=()):
    """Every (container, key) in a JSON document."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((obj, k))
            out += _paths(v)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i))
            out += _paths(v)
    return out


@pytest.fixture(scope="module")
def saved_pack(tiny_qm, tmp_path_factory):
    dec = LeanDecoder(tiny_qm, n_ctx=16, threads=1)
    return packcache.save(dec.to_packed_model(), tmp_path_factory.mktemp("fuzz") / "pc")


def test_fuzz_pack_cache_meta(saved_pack, tmp_path_factory):
    """Any edit of meta.json: a PackCacheError / decoder ValueError, or a decoder that runs."""
    import shutil
    from hypothesis import given, settings
    original = (saved_pack / "meta.json").read_text()

    @settings(max_examples=40, deadline=None)
    @given(_mutations())
    def check(edits):
        work = tmp_path_factory.mktemp("m")
        shutil.copy(saved_pack / "weights.bin", work / "weights.bin")
        meta = json.loads(original)
        for where, value in edits:
            spots = _paths(meta)
            container, key = spots[where % len(spots)]
            container[key] = value
        (work / "meta.json").write_text(json.dumps(meta))
        try:
            dec = LeanDecoder(packcache.load(work, verify=False), n_ctx=16, threads=1)
        except ValueError:             # PackCacheError, UnsupportedModelError, LaunchError, ...
            return
        logits = dec.prefill([1, 2])
        assert logits.shape == (64,)
    check()


def test_fuzz_pack_cache_meta_bytes(saved_pack, tmp_path):
    from hypothesis import given, settings, strategies as st
    import shutil
    shutil.copy(saved_pack / "weights.bin", tmp_path / "weights.bin")

    @settings(max_examples=40, deadline=None)
    @given(st.binary(max_size=256))
    def check(raw):
        (tmp_path / "meta.json").write_bytes(raw)
        with pytest.raises(packcache.PackCacheError):
            packcache.load(tmp_path)
    check()
