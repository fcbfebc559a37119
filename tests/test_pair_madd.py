"""tl.pair_madd / tl.pair_order against numpy on the host, the x86-avx2 target and the portable
target (AArch64 runs the LUT kernels that use it in tests/test_aarch64_emulated.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lutc
import lutc.language as tl
from lutc.backend.pairs import pair_width
from lutc.backend.target import get_target, runnable
from lutc.errors import CompilationError, LaunchError
from lutc.ir import pair_order
from lutc.ir import types as T


@lutc.jit
def _madd(a, b, r, out, N: tl.constexpr, NATURAL: tl.constexpr):
    lanes = tl.arange(0, N)
    ra = tl.load(r).to(tl.uint8)
    rb = tl.load(r + 1).to(tl.uint8)
    v = tl.pair_madd(tl.load(a + lanes), tl.load(b + lanes), ra, rb)
    if NATURAL:
        v = tl.pair_order(v)
    tl.store(out + lanes, v)


def _ref(a, b, ra, rb):
    return np.clip(ra * a.astype(np.int64) + rb * b.astype(np.int64), -32768, 32767).astype(np.int16)


_SIG = {"a": T.PointerType(T.int8), "b": T.PointerType(T.int8), "r": T.PointerType(T.int32),
        "out": T.PointerType(T.int16)}


def _check(n, ra, rb, seed, natural, target="host"):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, n, dtype=np.int8)
    b = rng.integers(-128, 128, n, dtype=np.int8)
    a[:2], b[:2] = -128, -128                      # the saturating corner
    out = np.zeros(n, np.int16)
    t = runnable(target)
    fn = _madd.compile(_SIG, dict(N=n, NATURAL=natural), 1, t)
    fn.launch((1,), [a, b, np.array([ra, rb], np.int32), out])
    want = _ref(a, b, ra, rb)
    np.testing.assert_array_equal(out, want if natural else want[pair_order(n, pair_width(t))])


@settings(max_examples=25, deadline=None)
@given(n=st.sampled_from([16, 32, 48, 64, 128]), ra=st.integers(0, 255), rb=st.integers(0, 255),
       seed=st.integers(0, 2**31), natural=st.booleans())
def test_pair_madd_matches_numpy(n, ra, rb, seed, natural):
    _check(n, ra, rb, seed, natural)


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512", "generic-x86"])
def test_pair_madd_named_targets(target):
    """The AVX2 (ymm vpmaddubsw), AVX-512BW (zmm) and portable (sign-extend, multiply, saturating
    add) lowerings."""
    try:
        runnable(target)
    except LaunchError:
        pytest.skip(f"this CPU cannot run {target}")
    for i, (n, ra, rb) in enumerate([(16, 1, 1), (32, 255, 255), (48, 64, 3), (64, 0, 200), (128, 7, 129),
                                     (96, 2, 9)]):
        for natural in (False, True):
            _check(n, ra, rb, i, natural, target)


def test_pair_order_is_a_permutation_and_stated_for_32_and_64():
    assert pair_order(32) == [*range(8), *range(16, 24), *range(8, 16), *range(24, 32)]
    assert pair_order(16) == list(range(16)) == pair_order(16, 64)
    assert pair_order(64, 64)[:16] == [*range(8), *range(16, 24)]
    assert pair_order(64, 64)[32:40] == list(range(8, 16))
    assert pair_order(96, 64)[64:] == [64 + v for v in pair_order(32)]     # a 32-lane tail
    for n in (16, 32, 48, 64, 80, 128):
        for w in (16, 32, 64):
            p = pair_order(n, w)
            assert sorted(p) == list(range(n))
        p = pair_order(n)
        assert [p[i] for i in p] == list(range(n))       # width 32: its own inverse
    assert pair_width(get_target("x86-avx512")) == 64 and pair_width(get_target("x86-avx2")) == 32
    assert pair_width(get_target("aarch64-linux")) == 32
    with pytest.raises(ValueError):
        pair_order(24)


def test_pair_madd_rejects_bad_operands():
    @lutc.jit
    def bad(a, out):
        lanes = tl.arange(0, 16)
        tl.store(out + lanes, tl.pair_madd(tl.load(a + lanes), tl.load(a + lanes), 300, 1))

    with pytest.raises(CompilationError, match="0..255"):
        bad[(1,)](np.zeros(16, np.int8), np.zeros(16, np.int16))


def test_default_layout_per_target():
    """Pairs on every x86 target with pshufb: 64-row tiles where vectors are 512 bits, 32-row ones
    on AVX2; single lookups in 32-row tiles on AArch64 and the portable target (lutc.ops.default_layout)."""
    from lutc.ops import default_schedule
    assert default_schedule(2, 64, 1, "x86-avx2").lut_pair and default_schedule(4, 128, 4, "x86-avx2").paired
    assert default_schedule(2, 64, 1, "x86-avx2").bn == 32 and default_schedule(4, 128, 4, "x86-avx2").bn == 32
    for bits, gs, M in ((1, 64, 1), (2, 64, 1), (2, 128, 4), (3, 128, 2), (4, 128, 8)):
        s = default_schedule(bits, gs, M, "x86-avx512")
        assert s.paired and s.bn == 64 and s.path == "lut", s
    for t in ("aarch64-linux", "generic-x86"):             # generic-x86: no byte shuffle at all
        assert not default_schedule(2, 64, 1, t).lut_pair and default_schedule(2, 64, 1, t).bn == 32
    assert default_schedule(2, 128, 16, "x86-avx2").path == "lut"          # AVX2 W2: LUT below 32 rows,
    assert default_schedule(2, 128, 64, "x86-avx2").path == "dot"          # dot from 32 (ops.dot_preferred)
    w4 = default_schedule(4, 128, 64, "x86-avx2")                           # W4 from 32 rows: dot, no pairs
    assert w4.path == "dot" and not w4.lut_pair and w4.bn == 32
    w4 = default_schedule(4, 128, 64, "x86-avx512")                         # the dot path reads the 64-row layout
    assert w4.path == "dot" and w4.bn == 64 and w4.dot_problem() is None


def test_default_unroll_avx2_w4_batches():
    """lutc.ops.default_unroll: 4-row passes of W4 pair tiles on AVX2 (buckets 4 and 8) take unroll 1;
    every other bucket, width and target keeps the Schedule's own (min(4, a scale block's chunks))."""
    from lutc.ops import default_schedule
    from lutc.ops import default_unroll
    assert [default_schedule(4, 128, M, "x86-avx2").unroll for M in (4, 8)] == [1, 1]
    for M, want in ((1, None), (2, None), (4, 1), (8, 1)):   # also on block-32 float tables (unroll 4)
        s = default_schedule(4, 128, M, "x86-avx2").replace(lut_scale_block=32, lut_scale_ratio=0,
                                                            lut_fine_planes=0, unroll=None)
        assert default_unroll(s, "x86-avx2") == want, (M, s)
    for bits, gs in ((2, 128), (3, 128)):
        assert [default_schedule(bits, gs, M, "x86-avx2").unroll for M in (1, 4)] == [2 if bits == 2 else 4] * 2
    for t in ("x86-avx512", "aarch64-linux", "generic-x86"):
        s = default_schedule(4, 128, 4, t)
        assert s.unroll == min(4, s.scale_chunks), (t, s)       # the Schedule's own
