"""DSL semantics: each builtin and control-flow form against numpy/Python on small launches."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lutc
import lutc.language as tl


@lutc.jit
def _binops(a, b, out, OP: tl.constexpr):
    offs = tl.arange(0, 16)
    x = tl.load(a + offs)
    y = tl.load(b + offs)
    if OP == "floordiv":
        r = x // y
    elif OP == "rem":
        r = x % y
    elif OP == "shr":
        r = x >> (y & 7)
    elif OP == "shl":
        r = x << (y & 7)
    elif OP == "min":
        r = tl.minimum(x, y)
    elif OP == "where":
        r = tl.where(x > y, x, y * 2)
    else:
        r = x * y - x
    tl.store(out + offs, r)


_PY = {"floordiv": lambda x, y: x // y, "rem": lambda x, y: x % y,
       "shr": lambda x, y: x >> (y & 7), "shl": lambda x, y: x << (y & 7),
       "min": np.minimum, "where": lambda x, y: np.where(x > y, x, y * 2),
       "mul": lambda x, y: x * y - x}

ints16 = st.lists(st.integers(-1000, 1000), min_size=16, max_size=16)


@given(ints16, ints16, st.sampled_from(sorted(_PY)))
def test_int_binops_follow_python(xs, ys, op):
    a = np.array(xs, np.int32)
    b = np.array([y if y != 0 else 3 for y in ys], np.int32)
    out = np.zeros(16, np.int32)
    _binops[(1,)](a, b, out, OP=op)
    np.testing.assert_array_equal(out, _PY[op](a.astype(np.int64), b.astype(np.int64)).astype(np.int32))


def test_int_division_by_zero_does_not_crash():
    a = np.arange(16, dtype=np.int32) - 8
    b = np.zeros(16, np.int32)
    b[::2] = 3
    out = np.zeros(16, np.int32)
    _binops[(1,)](a, b, out, OP="floordiv")  # would be SIGFPE with a raw idiv
    np.testing.assert_array_equal(out[::2], a[::2] // 3)


def test_float_ops_and_reductions():
    @lutc.jit
    def k(a, out):
        offs = tl.arange(0, 8)
        x = tl.load(a + offs)
        tl.store(out + 0, tl.sum(x))
        tl.store(out + 1, tl.max(x))
        tl.store(out + 2, tl.min(x))
        tl.store(out + 3, tl.sum(tl.sqrt(tl.abs(x))))
        tl.store(out + 4, tl.sum(tl.round(x * 3.0)))
        tl.store(out + 5, tl.sum(x // 0.5))
        tl.store(out + 6, tl.sum(tl.exp(x * 0.1)))
    a = np.linspace(-2.3, 3.7, 8).astype(np.float32)
    out = np.zeros(8, np.float32)
    k[(1,)](a, out)
    exp = [a.sum(), a.max(), a.min(), np.sqrt(np.abs(a)).sum(), np.round(a * 3).sum(),
           (a // 0.5).sum(), np.exp(a * 0.1).sum(), 0]
    np.testing.assert_allclose(out, np.array(exp, np.float32), rtol=1e-5, atol=1e-5)


def test_casts_saturate_and_truncate():
    @lutc.jit
    def k(a, out8, outu):
        offs = tl.arange(0, 8)
        x = tl.load(a + offs)
        tl.store(out8 + offs, x.to(tl.int8))
        tl.store(outu + offs, x.to(tl.int32).to(tl.uint8))
    a = np.array([-1e9, -129.7, -1.5, -0.4, 0.6, 126.9, 300.0, 1e9], np.float32)
    o8, ou = np.zeros(8, np.int8), np.zeros(8, np.uint8)
    k[(1,)](a, o8, ou)
    np.testing.assert_array_equal(o8, [-128, -128, -1, 0, 0, 126, 127, 127])
    np.testing.assert_array_equal(ou, (np.clip(np.trunc(a), -2**31, 2**31 - 1).astype(np.int64) & 0xFF))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float16, np.float32])
@pytest.mark.parametrize("entries,lanes", [(16, 32), (16, 16), (8, 64), (4, 8)])
def test_lookup_every_table_dtype(dtype, entries, lanes):
    @lutc.jit
    def k(tab, idx, out, E: tl.constexpr, L: tl.constexpr):
        t = tl.load(tab + tl.arange(0, E))
        i = tl.load(idx + tl.arange(0, L))
        tl.store(out + tl.arange(0, L), tl.lookup(t, i))
    rng = np.random.default_rng(entries * lanes)
    tab = (rng.standard_normal(entries) * 40).astype(dtype)
    idx = rng.integers(0, entries, lanes).astype(np.uint8)
    out = np.zeros(lanes, dtype)
    k[(1,)](tab, idx, out, E=entries, L=lanes)
    np.testing.assert_array_equal(out, tab[idx])


@pytest.mark.parametrize("g", [1, 2, 3, 4])
def test_lut_build_subset_sums(g):
    @lutc.jit
    def k(x, out, G: tl.constexpr):
        xs = tl.load(x + tl.arange(0, G))
        tl.store(out + tl.arange(0, 1 << G), tl.lut_build(xs))
    x = np.array([1.5, -2.25, 4.0, 0.125][:g], np.float32)
    out = np.zeros(1 << g, np.float32)
    k[(1,)](x, out, G=g)
    exp = [sum(x[j] for j in range(g) if i >> j & 1) for i in range(1 << g)]
    np.testing.assert_array_equal(out, np.array(exp, np.float32))


def test_grid_2d_gather_and_masks():
    @lutc.jit
    def k(a, out, n, stride, BLOCK: tl.constexpr):
        r = tl.program_id(0)
        c = tl.program_id(1)
        offs = c * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        v = tl.load(a + offs * stride + r, mask=m, other=-1.0)  # strided: a gather
        tl.store(out + r * n + offs, v + 1.0, mask=m)
    a = np.random.default_rng(0).standard_normal((37, 3)).astype(np.float32)
    out = np.zeros((3, 37), np.float32)
    k[(3, 3)](a, out, 37, 3, BLOCK=16, threads=2)
    np.testing.assert_array_equal(out, a.T + 1)


def test_loops_lists_calls_and_dynamic_if():
    @lutc.jit
    def helper(v, k):
        return v * 2 + k

    @lutc.jit
    def k(a, out, n, PARTS: tl.constexpr):
        accs = [tl.zeros((8,), tl.float32) for _ in tl.static_range(PARTS)]
        count = 0
        for i in range(n):
            for p in tl.static_range(PARTS):
                accs[p] += tl.load(a + i * 8 + tl.arange(0, 8)) * (p + 1)
            if i % 2 == 0:
                count += 1
        total = accs[0]
        for p in tl.static_range(1, PARTS):
            total += accs[p]
        tl.store(out + tl.arange(0, 8), helper(total, count.to(tl.float32)))
    a = np.arange(40, dtype=np.float32).reshape(5, 8)
    out = np.zeros(8, np.float32)
    k[(1,)](a, out, 5, PARTS=3)
    np.testing.assert_allclose(out, a.sum(0) * 6 * 2 + 3)


def test_calling_a_kernel_directly_is_an_error():
    with pytest.raises(RuntimeError, match="grid"):
        _binops(1, 2, 3, "mul")
    with pytest.raises(RuntimeError, match="inside an @lutc.jit kernel"):
        tl.load(None)


def test_python_min_max_fold_constants_scalars_and_blocks():
    @lutc.jit
    def k(a, out, outi, n, B: tl.constexpr):
        x = tl.load(a + tl.arange(0, 8))
        tl.store(outi + 0, min(4, 8, B))                       # constexpr only: folded
        tl.store(outi + 1, max(B, 2, 7) + max([1, B]))
        tl.store(outi + 2, tl.minimum(4, B) + tl.maximum(B, 9))
        tl.store(outi + 3, min(4, 8, n))                       # with a runtime scalar
        tl.store(outi + 4, max(n, 2, B))
        tl.store(out + tl.arange(0, 8), min(4, 8, x))          # with a block
        tl.store(out + 8 + tl.arange(0, 8), max(B, 2.0, x, n))
        tl.store(out + 16 + tl.arange(0, 8), min(x, 1.5, 3))
    a = np.arange(8, dtype=np.float32) - 2
    for n, b in [(3, 1), (-5, 6)]:
        out, outi = np.zeros(24, np.float32), np.zeros(5, np.int32)
        k[(1,)](a, out, outi, n, B=b)
        np.testing.assert_array_equal(outi, [min(4, 8, b), max(b, 2, 7) + max(1, b),
                                             min(4, b) + max(b, 9), min(4, 8, n), max(n, 2, b)])
        np.testing.assert_array_equal(out[:8], np.minimum(a, 4))
        np.testing.assert_array_equal(out[8:16], np.maximum(a, max(b, 2.0, n)))
        np.testing.assert_array_equal(out[16:], np.minimum(a, 1.5))


def test_every_language_builtin_has_a_lowering():
    from lutc.frontend import registry
    markers = [getattr(tl, n) for n in tl.__all__ if callable(getattr(tl, n))
               and getattr(tl, n).__module__ == tl.__name__ and getattr(tl, n) is not tl.constexpr]
    assert tl.load in markers and tl.static_range in markers
    for m in markers:
        entry, _ = registry.resolve(m)
        assert entry is not None and entry.lower is not None, m
    assert registry.resolve(tl.static_range)[0].loop is not None
    assert registry.resolve(range)[0].loop is not None
    assert registry.python_name("min") is min and registry.python_name("print") is None
