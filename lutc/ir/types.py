"""lutc IR types: scalar dtypes, pointers and 1-D/2-D blocks (which lower to flat LLVM vectors)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    """A scalar element type. `kind` is 'int', 'uint', 'float' or 'bool'."""

    name: str
    kind: str
    bits: int

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_int(self) -> bool:
        return self.kind in ("int", "uint", "bool")

    @property
    def is_signed(self) -> bool:
        return self.kind == "int"

    @property
    def nbytes(self) -> int:
        return max(1, self.bits // 8)

    def __repr__(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name


int1 = DType("i1", "bool", 1)
int8 = DType("i8", "int", 8)
uint8 = DType("u8", "uint", 8)
int16 = DType("i16", "int", 16)
uint16 = DType("u16", "uint", 16)
int32 = DType("i32", "int", 32)
uint32 = DType("u32", "uint", 32)
int64 = DType("i64", "int", 64)
uint64 = DType("u64", "uint", 64)
float16 = DType("f16", "float", 16)
float32 = DType("f32", "float", 32)
float64 = DType("f64", "float", 64)

ALL_DTYPES = (int1, int8, uint8, int16, uint16, int32, uint32, int64, uint64,
              float16, float32, float64)
DTYPES_BY_NAME = {d.name: d for d in ALL_DTYPES}
_NUMPY_NAMES = {"bool": int1, "int8": int8, "uint8": uint8, "int16": int16,
                "uint16": uint16, "int32": int32, "uint32": uint32, "int64": int64,
                "uint64": uint64, "float16": float16, "float32": float32,
                "float64": float64}


def dtype_from_numpy(np_dtype) -> DType:
    """Map a numpy dtype (or its name) to a lutc DType."""
    name = getattr(np_dtype, "name", str(np_dtype))
    if name not in _NUMPY_NAMES:
        raise TypeError(f"lutc has no dtype for numpy dtype {name!r}")
    return _NUMPY_NAMES[name]


def numpy_name(dt: DType) -> str:
    """The numpy dtype name of a lutc DType (the inverse of dtype_from_numpy)."""
    return next(k for k, v in _NUMPY_NAMES.items() if v == dt)


@dataclass(frozen=True)
class PointerType:
    """A pointer to elements of `elem` (a scalar DType)."""

    elem: DType

    def __str__(self) -> str:
        return f"*{self.elem}"

    __repr__ = __str__


@dataclass(frozen=True)
class BlockType:
    """A block of `size` elements; `elem` is a DType or PointerType.

    `shape` is (size,) for a 1-D block (the default) or (rows, cols) for a 2-D one. Every block
    lowers to one flat LLVM vector of `size` lanes, 2-D blocks in row-major order.
    """

    elem: object
    size: int
    shape: tuple = None

    def __post_init__(self):
        shape = (self.size,) if self.shape is None else tuple(int(d) for d in self.shape)
        n = 1
        for d in shape:
            n *= d
        if n != self.size or not 1 <= len(shape) <= 2:
            raise ValueError(f"block shape {shape} does not hold {self.size} lanes")
        object.__setattr__(self, "shape", shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"<{'x'.join(map(str, self.shape))}x{self.elem}>"

    __repr__ = __str__


def block(elem, shape) -> BlockType:
    """A block of `elem` with `shape` (an int or a tuple of one or two ints)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = 1
    for d in shape:
        n *= d
    return BlockType(elem, n, shape)


def block_shape(t):
    """The shape tuple of a block, or () for a scalar."""
    return t.shape if isinstance(t, BlockType) else ()


def scalar_of(t):
    """The element type of a block, or the type itself for scalars and pointers."""
    return t.elem if isinstance(t, BlockType) else t


def block_size(t):
    """Number of lanes of `t`, or None for a scalar."""
    return t.size if isinstance(t, BlockType) else None


def with_elem(t, elem):
    """`t` with its element type replaced (keeps block-ness)."""
    return BlockType(elem, t.size, t.shape) if isinstance(t, BlockType) else elem


def is_pointer(t) -> bool:
    return isinstance(scalar_of(t), PointerType)


def promote(a: DType, b: DType) -> DType:
    """Type of a binary arithmetic result (C-like rules, float wins, wider wins)."""
    if a == b:
        return a
    if a.is_float or b.is_float:
        if a.is_float and b.is_float:
            return a if a.bits >= b.bits else b
        return a if a.is_float else b
    if a.bits != b.bits:
        return a if a.bits > b.bits else b
    # same width, different signedness: unsigned wins (C rule)
    return a if a.kind == "uint" else b
