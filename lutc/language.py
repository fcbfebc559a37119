"""The lutc DSL surface (`import lutc.language as tl`): dtypes, constexpr and block builtins.

The functions here are markers: inside an `@lutc.jit` kernel the compiler's frontend
translates calls to them into IR. Called from ordinary Python they raise.
"""
from __future__ import annotations

import functools as _functools

from .ir import types as _T

# dtypes ---------------------------------------------------------------------------------
int1 = _T.int1
int8 = _T.int8
uint8 = _T.uint8
int16 = _T.int16
uint16 = _T.uint16
int32 = _T.int32
uint32 = _T.uint32
int64 = _T.int64
uint64 = _T.uint64
float16 = _T.float16
float32 = _T.float32
float64 = _T.float64


class constexpr:
    """Annotate a kernel parameter as a compile-time constant: `BLOCK: tl.constexpr`."""

    def __init__(self, value=None):
        self.value = value

    def __repr__(self) -> str:
        return f"constexpr({self.value!r})"


class static_range:
    """`for i in tl.static_range(n)`: the loop is unrolled at compile time; i is a constant."""

    def __init__(self, *args):
        self.range = range(*args)

    def __iter__(self):
        return iter(self.range)


def _builtin(fn):
    """A marker with `fn`'s name, signature and doc. Its lowering is declared in lutc/frontend/
    with `@builtin(tl.<name>)`; calls in kernels are bound against the signature here."""
    @_functools.wraps(fn)
    def marker(*args, **kwargs):
        raise RuntimeError(f"lutc.language.{fn.__name__}() can only be called inside an @lutc.jit kernel")

    return marker


@_builtin
def program_id(axis):
    """The index of this program instance along grid `axis` (0, 1 or 2), an i32."""


@_builtin
def num_programs(axis):
    """The grid size along `axis`, an i32."""


@_builtin
def arange(start, end):
    """A block of i32 [start, end); start and end are compile-time constants."""


@_builtin
def zeros(shape, dtype):
    """A block of zeros: `shape` is an int, a 1-tuple or a 2-tuple."""


@_builtin
def full(shape, value, dtype):
    """A block filled with `value`."""


@_builtin
def load(pointer, mask=None, other=None):
    """Load through a pointer or block of pointers; masked-off lanes read `other` (0)."""


@_builtin
def store(pointer, value, mask=None):
    """Store through a pointer or block of pointers; masked-off lanes are not written."""


@_builtin
def prefetch(pointer, locality=3):
    """A hint to bring the cache line at a scalar pointer closer (a read): locality 0 (streaming,
    x86 prefetchnta) .. 3 (keep in all levels, prefetcht0). Never faults, so the address may lie
    past the buffer; no code on targets without a prefetch instruction."""


@_builtin
def where(condition, x, y):
    """Lane-wise select."""


@_builtin
def minimum(x, y):
    """Lane-wise minimum."""


@_builtin
def maximum(x, y):
    """Lane-wise maximum."""


@_builtin
def abs(x):
    """Lane-wise absolute value."""


@_builtin
def round(x):
    """Round to nearest, ties to even."""


@_builtin
def floor(x):
    """Lane-wise floor."""


@_builtin
def ceil(x):
    """Lane-wise ceil."""


@_builtin
def sqrt(x):
    """Lane-wise square root."""


@_builtin
def exp(x):
    """Lane-wise e**x."""


@_builtin
def log(x):
    """Lane-wise natural log."""


@_builtin
def sum(x, axis=None):
    """Sum of the lanes of a block (a scalar), or along `axis` of a 2-D block."""


@_builtin
def max(x, axis=None):
    """Maximum lane of a block, or maxima along `axis` of a 2-D block."""


@_builtin
def min(x, axis=None):
    """Minimum lane of a block, or minima along `axis` of a 2-D block."""


@_builtin
def reshape(x, shape):
    """The lanes of x (row-major) as a block of `shape` (an int or a 1- or 2-tuple)."""


@_builtin
def expand_dims(x, axis):
    """x with a new axis of size 1 at `axis`: x[None, :] (axis 0) or x[:, None] (axis 1)."""


@_builtin
def broadcast_to(x, shape):
    """x broadcast to `shape` (numpy rules)."""


@_builtin
def trans(x):
    """The transpose of a 2-D block."""


@_builtin
def dot(a, b, acc=None):
    """(M, K) x (K, N) matrix product of 2-D blocks: u8/i8 x i8, i8 x u8 or i16 x i16 -> i32 (exact,
    wrapping like numpy int32), f32 x f32 -> f32; `acc` (M, N) is added."""


@_builtin
def cdiv(x, y):
    """Ceiling division."""


@_builtin
def bitcast(x, dtype):
    """Reinterpret the bits of x as `dtype` (same width); a scalar pointer becomes a pointer to
    `dtype` elements at the same address (as Triton's `ptr.to(tl.pointer_type(dtype))`)."""


@_builtin
def concat(x, y):
    """Concatenate two blocks of one dtype."""


@_builtin
def lut_build(xs):
    """All 2**g subset sums of a block of g activations: T[i] = sum_j bit_j(i) * xs[j]."""


@_builtin
def lookup(table, idx):
    """Table lookup by byte shuffle: out[j] = table[idx[j]]; idx is a u8 block < len(table)."""


@_builtin
def pair_madd(a, b, ra, rb):
    """Pair multiply-add of two int8 blocks of n lanes (n a multiple of 16) into int16, in pair
    order: out[i] = sat16(ra * a[p[i]] + rb * b[p[i]]) with u8 multipliers ra, rb and p = the
    target's pair order (lutc.ir.pair_order(n, lutc.backend.pairs.pair_width(target)));
    `pair_order(out)` puts the lanes back in lane order."""


@_builtin
def pair_order(x):
    """A block in pair order back in lane order: out[p[i]] = x[i] (p as in pair_madd)."""


@_builtin
def static_assert(condition, message=""):
    """A compile-time assertion on constexpr values."""


__all__ = [n for n in dir() if not n.startswith("_")]
