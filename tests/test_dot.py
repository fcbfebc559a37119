"""tl.dot and 2-D blocks: bit-exact int8 matmul tiles against numpy on every lowering that runs
here (vpdpbusd, vpmaddwd, vpmaddubsw, the portable fallback), for u8/i8 x i8 and i8 x u8 (the
signed-A, unsigned-B variant), broadcasting, reshape, transpose and axis reductions. AArch64
(sdot/usdot/mmla) runs under qemu in test_aarch64_emulated.py."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lutc
import lutc.language as tl
from lutc.backend.target import get_target, runnable
from lutc.backend.toolchain import native_mismatch
from lutc.ir.ranges import maddubs_safe


@lutc.jit
def tile_dot(a, b, c, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
             CLAMP: tl.constexpr):
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.int32)
    for k0 in range(0, K, BK):
        k = k0 + offs_k
        x = tl.load(a + offs_m[:, None] * K + k[None, :], mask=(offs_m[:, None] < M) & (k[None, :] < K))
        w = tl.load(b + k[:, None] * N + offs_n[None, :], mask=(k[:, None] < K) & (offs_n[None, :] < N))
        if CLAMP == 1:  # a range the compiler can prove: w in [-64, 64]
            w = tl.minimum(tl.maximum(w, -64), 64)
        if CLAMP == 2:  # u8 w in [0, 127]
            w = w & 127
        acc = tl.dot(x, w, acc)
    tl.store(c + offs_m[:, None] * N + offs_n[None, :], acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _with(base, name, features):
    t = get_target(base)
    return dataclasses.replace(t, name=name, features=features or t.features)


# target -> the instruction its dot must use (asserted in test_asm.py as well)
TARGETS = {
    "host": None,
    "x86-avx2": "vpmaddwd",
    "x86-avx512": "vpmaddwd",
    "avxvnni": "vpdpbusd",
    "portable": None,
}


def _target(name):
    if name == "avxvnni":
        return _with("x86-avx2", "x86-avxvnni", get_target("x86-avx2").features + ",+avxvnni")
    if name == "portable":  # no SIMD feature named: the portable i32 lowering
        return _with("generic-x86", "portable", "+64bit")
    return get_target(name)


def _run_target(name):
    t = _target(name)
    if not t.is_x86 or native_mismatch(t) is not None:
        pytest.skip(f"{name} code cannot run here: {native_mismatch(t)}")
    return runnable(t)


_SIG = dict(b="*i8", c="*i32", M="i32", N="i32", K="i32")
_FNS = {}


_PTR = {np.dtype(np.uint8): "*u8", np.dtype(np.int8): "*i8", np.dtype(np.int16): "*i16"}


def _dot(target, A, B, tile=(4, 16, 32), clamp=False):
    a_t, b_t = _PTR[A.dtype], _PTR[B.dtype]
    key = (target, a_t, b_t, tile, clamp)
    if key not in _FNS:
        BM, BN, BK = tile
        _FNS[key] = tile_dot.compile({"a": a_t, **_SIG, "b": b_t}, dict(BM=BM, BN=BN, BK=BK, CLAMP=int(clamp)), 2,
                                     _run_target(target))
    (M, K), N = A.shape, B.shape[1]
    C = np.full((M, N), -7, np.int32)
    _FNS[key].launch((-(-M // tile[0]), -(-N // tile[1])), [A, B, C, M, N, K])
    return C


def _ref(A, B, clamp=False):
    Bc = (B & 127 if B.dtype == np.uint8 else np.clip(B, -64, 64)) if clamp else B
    return A.astype(np.int64) @ Bc.astype(np.int64)


def _edge_matrix(rng, shape, dt, p_edge=0.5):
    info = np.iinfo(dt)
    x = rng.integers(info.min, info.max + 1, shape)
    edges = rng.choice([info.min, info.max, 0, info.max - 1], shape)
    return np.where(rng.random(shape) < p_edge, edges, x).astype(dt)


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("adt", [np.uint8, np.int8])
def test_extreme_values_are_exact(target, adt):
    """All-extreme operands: every pair sum would saturate vpmaddubsw; the result must not."""
    hi = np.iinfo(adt).max if adt == np.uint8 else np.iinfo(adt).min
    for a_val, b_val in ((hi, -128), (np.iinfo(adt).max, 127), (hi, 127)):
        A = np.full((5, 70), a_val, adt)
        B = np.full((70, 19), b_val, np.int8)
        np.testing.assert_array_equal(_dot(target, A, B), _ref(A, B))


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("adt", [np.uint8, np.int8])
def test_ragged_edge_values(target, adt):
    rng = np.random.default_rng(hash((target, adt.__name__)) % 2**32)
    for M, N, K in ((1, 1, 1), (3, 17, 33), (9, 31, 100)):
        A, B = _edge_matrix(rng, (M, K), adt), _edge_matrix(rng, (K, N), np.int8)
        np.testing.assert_array_equal(_dot(target, A, B), _ref(A, B), err_msg=f"{M}x{N}x{K}")


@settings(max_examples=20)
@given(M=st.integers(1, 20), N=st.integers(1, 40), K=st.integers(1, 130), seed=st.integers(0, 2**31),
       signed=st.booleans(), p_edge=st.sampled_from([0.0, 0.3, 1.0]),
       tile=st.sampled_from([(4, 16, 32), (3, 5, 7)]))
def test_property_host_matches_numpy(M, N, K, seed, signed, p_edge, tile):
    rng = np.random.default_rng(seed)
    adt = np.int8 if signed else np.uint8
    A, B = _edge_matrix(rng, (M, K), adt, p_edge), _edge_matrix(rng, (K, N), np.int8, p_edge)
    np.testing.assert_array_equal(_dot("host", A, B, tile), _ref(A, B))


@settings(max_examples=10)
@given(M=st.integers(1, 12), N=st.integers(1, 40), K=st.integers(1, 100), seed=st.integers(0, 2**31),
       target=st.sampled_from(["x86-avx2", "portable"]))
def test_property_other_lowerings_match_numpy(M, N, K, seed, target):
    rng = np.random.default_rng(seed)
    A, B = _edge_matrix(rng, (M, K), np.int8), _edge_matrix(rng, (K, N), np.int8)
    np.testing.assert_array_equal(_dot(target, A, B), _ref(A, B))


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512", "host"])
def test_proven_range_uses_maddubs_exactly(target):
    """With B clamped to [-64, 64] AVX2 may use vpmaddubsw: 2 * 255 * 64 = 32640 fits i16."""
    rng = np.random.default_rng(5)
    A = np.full((6, 64), 255, np.uint8)
    for B in (np.full((64, 20), -128, np.int8), np.full((64, 20), 127, np.int8),
              _edge_matrix(rng, (64, 20), np.int8)):
        np.testing.assert_array_equal(_dot(target, A, B, clamp=True), _ref(A, B, clamp=True))


@pytest.mark.parametrize("target", list(TARGETS))
def test_signed_a_unsigned_b_extremes(target):
    """i8 x u8: A's signed bytes against B's unsigned ones at every corner (-128, 127 x 0, 255)."""
    for a_val in (-128, 127, -1):
        for b_val in (255, 0, 128, 1):
            A = np.full((5, 70), a_val, np.int8)
            B = np.full((70, 19), b_val, np.uint8)
            np.testing.assert_array_equal(_dot(target, A, B), _ref(A, B), err_msg=f"{a_val} x {b_val}")


@pytest.mark.parametrize("target", list(TARGETS))
def test_signed_a_unsigned_b_ragged(target):
    rng = np.random.default_rng(hash(target) % 2**32)
    for tile in ((4, 16, 32), (3, 5, 7), (1, 32, 32)):
        for M, N, K in ((1, 1, 1), (3, 17, 33), (9, 31, 100), (8, 16, 32)):
            A, B = _edge_matrix(rng, (M, K), np.int8), _edge_matrix(rng, (K, N), np.uint8)
            np.testing.assert_array_equal(_dot(target, A, B, tile), _ref(A, B), err_msg=f"{tile} {M}x{N}x{K}")


@settings(max_examples=20)
@given(M=st.integers(1, 20), N=st.integers(1, 40), K=st.integers(1, 130), seed=st.integers(0, 2**31),
       p_edge=st.sampled_from([0.0, 0.3, 1.0]), tile=st.sampled_from([(4, 16, 32), (3, 5, 7), (8, 16, 32)]),
       target=st.sampled_from(["host", "x86-avx2", "portable"]))
def test_property_signed_a_unsigned_b(M, N, K, seed, p_edge, tile, target):
    rng = np.random.default_rng(seed)
    A, B = _edge_matrix(rng, (M, K), np.int8, p_edge), _edge_matrix(rng, (K, N), np.uint8, p_edge)
    np.testing.assert_array_equal(_dot(target, A, B, tile), _ref(A, B))


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512", "host"])
def test_unsigned_b_proven_below_128_uses_maddubs_exactly(target):
    """u8 B & 127 against any i8 A: 2 * 127 * 128 = 32512 fits i16, so AVX2 may use vpmaddubsw
    (B as its unsigned operand)."""
    rng = np.random.default_rng(6)
    B = np.full((64, 20), 255, np.uint8)
    for A in (np.full((6, 64), -128, np.int8), np.full((6, 64), 127, np.int8), _edge_matrix(rng, (6, 64), np.int8)):
        np.testing.assert_array_equal(_dot(target, A, B, clamp=2), _ref(A, B, clamp=True))


@pytest.mark.parametrize("target", list(TARGETS))
def test_int16_extremes_wrap_like_int32(target):
    """i16 x i16 (vpmaddwd on x86): -32768 * -32768 pairs are the one sum past int32; the result
    wraps exactly as numpy's int32 does."""
    rng = np.random.default_rng(7)
    for a_val, b_val in ((-32768, -32768), (32767, -32768), (32767, 32767), (-1, 255)):
        A = np.full((5, 70), a_val, np.int16)
        B = np.full((70, 19), b_val, np.int16)
        np.testing.assert_array_equal(_dot(target, A, B), _ref(A, B).astype(np.int32), err_msg=f"{a_val} x {b_val}")
    for tile in ((4, 16, 32), (3, 5, 7), (8, 8, 16)):
        for M, N, K in ((1, 1, 1), (3, 17, 33), (9, 31, 100)):
            A, B = _edge_matrix(rng, (M, K), np.int16), _edge_matrix(rng, (K, N), np.int16)
            np.testing.assert_array_equal(_dot(target, A, B, tile), _ref(A, B).astype(np.int32),
                                          err_msg=f"{tile} {M}x{N}x{K}")


def test_maddubs_bound():
    assert maddubs_safe((0, 255), (-64, 64))
    assert not maddubs_safe((0, 255), (-65, 64)) and not maddubs_safe((0, 255), (-64, 65))
    assert maddubs_safe((0, 127), (-128, 127))       # 2 * 127 * 128 = 32512
    assert not maddubs_safe((0, 255), (-128, 127))
    assert not maddubs_safe((-1, 255), (0, 1))       # the first operand is read unsigned


def test_example_kernel_in_docs_matches_numpy():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "int8_matmul.py"
    spec = importlib.util.spec_from_file_location("int8_matmul", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(1)
    a = _edge_matrix(rng, (21, 77), np.uint8)
    b = _edge_matrix(rng, (77, 35), np.int8)
    np.testing.assert_array_equal(mod.matmul(a, b, threads=2), _ref(a, b))
    # the kernel shown in docs/dsl.md is this one, line for line
    import inspect
    docs = (path.parents[1] / "docs" / "dsl.md").read_text()
    kernel = inspect.getsource(mod.matmul_i8.fn).strip()
    assert kernel.startswith("@lutc.jit") and kernel in docs


@lutc.jit
def codes_dot(a, codes, c, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    rm = tl.arange(0, M)
    rn = tl.arange(0, N)
    rk = tl.arange(0, K)
    x = tl.load(a + rm[:, None] * K + rk[None, :])
    w = (tl.load(codes + rk[:, None] * N + rn[None, :]) & 15).to(tl.int8) - 8   # in [-8, 7]
    tl.store(c + rm[:, None] * N + rn[None, :], tl.dot(x, w))


def test_range_of_4bit_codes_is_proven_for_maddubs():
    """B = (codes & 15) - 8 lies in [-8, 7]: AVX2 multiplies with vpmaddubsw, and stays exact."""
    sig = {"a": "*u8", "codes": "*u8", "c": "*i32"}
    cx = dict(M=4, N=16, K=64)
    assert "vpmaddubsw" in codes_dot.emit(sig, cx, 1, get_target("x86-avx2"), kind="asm")
    fn = codes_dot.compile(sig, cx, 1, _run_target("x86-avx2"))
    rng = np.random.default_rng(9)
    A = _edge_matrix(rng, (4, 64), np.uint8)
    A[0] = 255
    codes = rng.integers(0, 256, (64, 16)).astype(np.uint8)
    codes[:, 0] = 0  # -8 everywhere in column 0, with A = 255 in row 0
    C = np.zeros((4, 16), np.int32)
    fn.launch((1,), [A, codes, C])
    np.testing.assert_array_equal(C, _ref(A, ((codes & 15).astype(np.int16) - 8).astype(np.int8)))
