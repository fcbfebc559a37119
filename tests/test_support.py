"""Runtime support: fp16 conversion builtins for CPUs without F16C; unresolvable symbols refused."""
import numpy as np
import pytest

import lutc
import lutc.language as tl
from lutc.backend.toolchain import inspect_object, runs_here
from lutc.backend.target import get_target

GENERIC = "generic-x86"
pytestmark = pytest.mark.skipif(not runs_here(get_target(GENERIC)), reason="host is not x86-64")


@lutc.jit
def convert(src, dst, n, BLOCK: tl.constexpr, TO: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(dst + offs, tl.load(src + offs, mask=m).to(TO), mask=m)


def _run(src, dst_dtype, to):
    dst = np.zeros(src.shape, dst_dtype)
    sig = {"src": "*" + str(lutc.ir.types.dtype_from_numpy(src.dtype)),
           "dst": "*" + str(lutc.ir.types.dtype_from_numpy(dst.dtype)), "n": "i32"}
    f = convert.compile(sig, {"BLOCK": 64, "TO": to}, 1, GENERIC)
    assert any("hf" in s for s in inspect_object(f.obj).undefined), "expected a libcall on this target"
    f.launch((-(-src.size // 64),), [src, dst, src.size], 2)
    return dst


def test_half_to_float_exhaustive():
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    got = _run(halves, np.float32, tl.float32)
    want = halves.astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


def test_float_to_half_rounds_to_nearest_even():
    rng = np.random.default_rng(0)
    edge = np.array([0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e9, -1e9, np.inf, -np.inf, np.nan,
                     2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11],
                    np.float32)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    src = np.concatenate([edge, -edge, bits, rng.standard_normal(50_000).astype(np.float32)])
    got = _run(src, np.float16, tl.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        want = src.astype(np.float16)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])


def test_missing_symbol_is_refused_not_called():
    """A double -> half cast needs __truncdfhf2, which nothing provides: a clear error."""
    src = np.ones(8, np.float64)
    with pytest.raises(RuntimeError, match="__truncdfhf2"):
        _run(src, np.float16, tl.float16)
