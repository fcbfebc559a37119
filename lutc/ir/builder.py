"""IRBuilder: creates typed lutc ops with result-type inference and type checks."""
from __future__ import annotations

from . import types as T
from .core import Op, Region, Value

INT_BINOPS = ("and", "or", "xor", "shl", "shr")
ARITH_BINOPS = ("add", "sub", "mul", "div", "floordiv", "rem", "min", "max")
CMP_PREDS = ("lt", "le", "gt", "ge", "eq", "ne")
UNARY_FLOAT = ("round", "floor", "ceil", "sqrt", "exp", "log")
UNARY_ANY = ("neg", "abs", "not")
REDUCE_KINDS = ("sum", "max", "min")


class IRTypeError(Exception):
    """A type or shape error in the program being built (the frontend adds a location)."""


class IRBuilder:
    """Appends ops to the current region; every method returns the result Value(s)."""

    def __init__(self, region: Region):
        self.region = region
        self.loc = None

    # -- plumbing
    def _emit(self, opname, operands, result_types, attrs=None, regions=()):
        op = Op(opname, operands, result_types, attrs, regions, self.loc)
        op.parent = self.region
        self.region.ops.append(op)
        return op

    def _one(self, *args, **kw) -> Value:
        return self._emit(*args, **kw).results[0]

    # -- leaves
    def const(self, value, dtype: T.DType) -> Value:
        if dtype.is_float:
            value = float(value)
        elif dtype == T.int1:
            value = bool(value)
        else:
            value = int(value)
            lo, hi = _int_range(dtype)
            if not lo <= value <= hi:
                raise IRTypeError(f"constant {value} does not fit in {dtype}")
        return self._one("const", [], [dtype], {"value": value})

    def program_id(self, axis: int) -> Value:
        return self._one("program_id", [], [T.int32], {"axis": axis})

    def num_programs(self, axis: int) -> Value:
        return self._one("num_programs", [], [T.int32], {"axis": axis})

    def arange(self, start: int, end: int) -> Value:
        if end <= start:
            raise IRTypeError(f"arange needs end > start, got arange({start}, {end})")
        n = end - start
        if n > 4096:
            raise IRTypeError(f"arange length must be at most 4096 lanes, got {n}")
        return self._one("arange", [], [T.BlockType(T.int32, n)], {"start": start, "end": end})

    # -- shape and type changes
    def splat(self, v: Value, shape) -> Value:
        """`v` as a block of `shape` (an int or a shape tuple): scalars splat, blocks broadcast."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if isinstance(v.type, T.BlockType):
            if v.type.shape == shape:
                return v
            if v.type.rank == 1 and len(shape) == 1:
                raise IRTypeError(f"cannot broadcast a block of {v.type.size} lanes to {shape[0]}")
            return self.broadcast_to(v, shape)
        return self._one("splat", [v], [_block(v.type, shape)])

    def broadcast_to(self, v: Value, shape) -> Value:
        """Numpy broadcasting of a block to `shape`: dimensions of 1 repeat, missing ones lead."""
        src = v.type.shape
        if len(src) > len(shape) or any(s not in (1, d) for s, d in zip(src[::-1], shape[::-1])):
            raise IRTypeError(f"cannot broadcast a block of shape {src} to {tuple(shape)}")
        v = self.reshape(v, (1,) * (len(shape) - len(src)) + src)
        if v.type.shape == tuple(shape):
            return v
        return self._one("broadcast", [v], [_block(v.type.elem, shape)], {"shape": tuple(shape)})

    def reshape(self, v: Value, shape) -> Value:
        """The same lanes in row-major order under another shape (no data movement)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not isinstance(v.type, T.BlockType):
            raise IRTypeError(f"reshape needs a block, got scalar {v.type}")
        if not 1 <= len(shape) <= 2 or any(d < 1 for d in shape):
            raise IRTypeError(f"blocks are 1-D or 2-D with positive sizes, got shape {shape}")
        if T.block(v.type.elem, shape).size != v.type.size:
            raise IRTypeError(f"cannot reshape a block of shape {v.type.shape} to {shape}")
        if v.type.shape == shape:
            return v
        return self._one("reshape", [v], [T.block(v.type.elem, shape)], {"shape": shape})

    def expand_dims(self, v: Value, axis: int) -> Value:
        """`v[:, None]` (axis 1) or `v[None, :]` (axis 0) of a 1-D block, or a scalar's (1,)."""
        shape = list(T.block_shape(v.type))
        if len(shape) >= 2:
            raise IRTypeError(f"cannot add an axis to a 2-D block {v.type}")
        shape.insert(axis, 1)
        if not isinstance(v.type, T.BlockType):
            return self.splat(v, tuple(shape))
        return self.reshape(v, tuple(shape))

    def trans(self, v: Value) -> Value:
        if not isinstance(v.type, T.BlockType) or v.type.rank != 2:
            raise IRTypeError(f"trans needs a 2-D block, got {v.type}")
        r, c = v.type.shape
        return self._one("transpose", [v], [T.block(v.type.elem, (c, r))])

    def broadcast_shape(self, *types):
        """The common block shape of `types` (numpy rules), or None if all are scalars."""
        shapes = [t.shape for t in types if isinstance(t, T.BlockType)]
        if not shapes:
            return None
        out = shapes[0]
        for s in shapes[1:]:
            if len(out) == 1 and len(s) == 1 and s != out:
                raise IRTypeError(f"shape mismatch: block of {out[0]} lanes vs block of {s[0]} lanes")
            a, b = (1,) * (len(s) - len(out)) + out, (1,) * (len(out) - len(s)) + s
            if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
                raise IRTypeError(f"shape mismatch: block of shape {out} vs block of shape {s}")
            out = tuple(max(x, y) for x, y in zip(a, b))
        return out

    def cast(self, v: Value, dtype: T.DType) -> Value:
        src = T.scalar_of(v.type)
        if isinstance(src, T.PointerType):
            raise IRTypeError(f"cannot cast a pointer ({v.type}) to {dtype}")
        if src == dtype:
            return v
        return self._one("cast", [v], [T.with_elem(v.type, dtype)], {"to": dtype})

    def bitcast(self, v: Value, dtype: T.DType) -> Value:
        """Same bits as `dtype`; a scalar pointer becomes a pointer to `dtype` elements (same address)."""
        src = T.scalar_of(v.type)
        if isinstance(v.type, T.PointerType):
            if v.type.elem == dtype:
                return v
            return self._one("bitcast", [v], [T.PointerType(dtype)], {"to": dtype})
        if isinstance(src, T.PointerType) or src.bits != dtype.bits:
            raise IRTypeError(f"bitcast needs equal widths, got {src} -> {dtype}")
        if src == dtype:
            return v
        return self._one("bitcast", [v], [T.with_elem(v.type, dtype)], {"to": dtype})

    def broadcast_pair(self, a: Value, b: Value):
        shape = self.broadcast_shape(a.type, b.type)
        if shape is not None:
            a, b = self.splat(a, shape), self.splat(b, shape)
        return a, b

    def unify(self, a: Value, b: Value):
        """Broadcast and promote two arithmetic operands to one type."""
        ea, eb = T.scalar_of(a.type), T.scalar_of(b.type)
        if isinstance(ea, T.PointerType) or isinstance(eb, T.PointerType):
            raise IRTypeError(f"arithmetic on pointers is only `pointer + integer` ({a.type}, {b.type})")
        dt = T.promote(ea, eb)
        a, b = self.cast(a, dt), self.cast(b, dt)
        return self.broadcast_pair(a, b)

    # -- arithmetic
    def binary(self, kind: str, a: Value, b: Value) -> Value:
        a, b = self.unify(a, b)
        dt = T.scalar_of(a.type)
        if kind in INT_BINOPS and dt.is_float:
            raise IRTypeError(f"bitwise '{kind}' needs integer operands, got {dt}")
        if kind not in INT_BINOPS + ARITH_BINOPS:
            raise IRTypeError(f"unknown binary op {kind}")
        return self._one("binary", [a, b], [a.type], {"kind": kind})

    def cmp(self, pred: str, a: Value, b: Value) -> Value:
        a, b = self.unify(a, b)
        return self._one("cmp", [a, b], [T.with_elem(a.type, T.int1)], {"pred": pred})

    def unary(self, kind: str, v: Value) -> Value:
        dt = T.scalar_of(v.type)
        if isinstance(dt, T.PointerType):
            raise IRTypeError(f"'{kind}' is not defined on pointers")
        if kind in UNARY_FLOAT and not dt.is_float:
            raise IRTypeError(f"'{kind}' needs a float operand, got {dt}")
        if kind == "not" and dt.is_float:
            raise IRTypeError(f"bitwise not needs an integer operand, got {dt}")
        return self._one("unary", [v], [v.type], {"kind": kind})

    def select(self, cond: Value, a: Value, b: Value) -> Value:
        if T.scalar_of(cond.type) != T.int1:
            raise IRTypeError(f"where() needs a boolean condition, got {cond.type}")
        a, b = self.unify(a, b)
        shape = self.broadcast_shape(cond.type, a.type)
        if shape is not None:
            cond, a, b = self.splat(cond, shape), self.splat(a, shape), self.splat(b, shape)
        return self._one("select", [cond, a, b], [a.type])

    def reduce(self, kind: str, v: Value, axis=None) -> Value:
        """Reduce all lanes (axis None, or axis 0 of a 1-D block) or one axis of a 2-D block."""
        if not isinstance(v.type, T.BlockType):
            raise IRTypeError(f"reduce '{kind}' needs a block, got scalar {v.type}")
        rank = v.type.rank
        if axis is not None:
            if not -rank <= axis < rank:
                raise IRTypeError(f"axis {axis} is out of range for a block of shape {v.type.shape}")
            axis %= rank
        if axis is None or rank == 1:
            return self._one("reduce", [v], [v.type.elem], {"kind": kind})
        rt = T.block(v.type.elem, v.type.shape[1 - axis])
        return self._one("reduce", [v], [rt], {"kind": kind, "axis": axis})

    def dot(self, a: Value, b: Value, acc=None) -> Value:
        """(M, K) x (K, N) -> (M, N): u8/i8 x i8, i8 x u8 and i16 x i16 -> i32 exactly (wrapping
        like numpy int32), or f32 x f32 -> f32; `acc` (M, N) of the result dtype is added."""
        ta, tb = a.type, b.type
        if not (isinstance(ta, T.BlockType) and isinstance(tb, T.BlockType) and ta.rank == tb.rank == 2):
            raise IRTypeError(f"dot needs two 2-D blocks, got {ta} and {tb}")
        (m, k), (k2, n) = ta.shape, tb.shape
        if k != k2:
            raise IRTypeError(f"dot shape mismatch: ({m}, {k}) x ({k2}, {n})")
        if ((ta.elem in (T.uint8, T.int8) and tb.elem == T.int8) or (ta.elem == T.int8 and tb.elem == T.uint8)
                or ta.elem == tb.elem == T.int16):
            out = T.int32
        elif ta.elem == tb.elem == T.float32:
            out = T.float32
        else:
            raise IRTypeError(f"dot supports u8/i8 x i8, i8 x u8, i16 x i16 -> i32 and f32 x f32 -> f32, got {ta.elem} x {tb.elem}")
        rt = _block(out, (m, n))
        acc = self.splat(self.const(0, out), (m, n)) if acc is None else acc
        if acc.type != rt:
            raise IRTypeError(f"dot accumulator must be {rt}, got {acc.type}")
        return self._one("dot", [a, b, acc], [rt])

    # -- memory
    def addptr(self, ptr: Value, off: Value) -> Value:
        pt = T.scalar_of(ptr.type)
        if not isinstance(pt, T.PointerType):
            raise IRTypeError(f"expected a pointer, got {ptr.type}")
        ot = T.scalar_of(off.type)
        if not (isinstance(ot, T.DType) and ot.is_int):
            raise IRTypeError(f"pointer offsets must be integers, got {off.type}")
        ptr, off = self.broadcast_pair(ptr, off)
        return self._one("addptr", [ptr, off], [ptr.type])

    def load(self, ptr: Value, mask=None, other=None) -> Value:
        pt = T.scalar_of(ptr.type)
        if not isinstance(pt, T.PointerType):
            raise IRTypeError(f"load() needs a pointer or block of pointers, got {ptr.type}")
        rt = T.with_elem(ptr.type, pt.elem)
        operands = [ptr]
        if mask is not None:
            mask = self._check_mask(mask, ptr)
            other = self.const(0, pt.elem) if other is None else self.cast(other, pt.elem)
            if isinstance(rt, T.BlockType):
                other = self.splat(other, rt.shape)
            operands += [mask, other]
        return self._one("load", operands, [rt])

    def store(self, ptr: Value, value: Value, mask=None):
        pt = T.scalar_of(ptr.type)
        if not isinstance(pt, T.PointerType):
            raise IRTypeError(f"store() needs a pointer or block of pointers, got {ptr.type}")
        vt = T.scalar_of(value.type)
        if vt != pt.elem:
            raise IRTypeError(f"store of {vt} through a pointer to {pt.elem}; cast with .to(...) first")
        if isinstance(ptr.type, T.BlockType):
            value = self.splat(value, ptr.type.shape)
        elif isinstance(value.type, T.BlockType):
            raise IRTypeError(f"cannot store a block {value.type} through a scalar pointer")
        operands = [ptr, value]
        if mask is not None:
            operands.append(self._check_mask(mask, ptr))
        self._emit("store", operands, [])

    def prefetch(self, ptr: Value, locality: int):
        if not isinstance(ptr.type, T.PointerType):
            raise IRTypeError(f"prefetch() needs a scalar pointer, got {ptr.type}")
        if not 0 <= locality <= 3:
            raise IRTypeError(f"prefetch locality must be 0..3, got {locality}")
        self._emit("prefetch", [ptr], [], {"locality": locality})

    def _check_mask(self, mask, ptr):
        if T.scalar_of(mask.type) != T.int1:
            raise IRTypeError(f"mask must be boolean, got {mask.type}")
        shape = T.block_shape(ptr.type)
        if not shape:
            if isinstance(mask.type, T.BlockType):
                raise IRTypeError("a block mask needs a block of pointers")
            return mask
        return self.splat(mask, shape)

    # -- LUT ops
    def lut_build(self, xs: Value) -> Value:
        t = xs.type
        if not isinstance(t, T.BlockType) or not t.elem.is_float:
            raise IRTypeError(f"lut_build needs a float block of g activations, got {t}")
        if not 1 <= t.size <= 4:
            raise IRTypeError(f"lut_build supports g = 1..4 activations per table, got {t.size}")
        return self._one("lut_build", [xs], [T.BlockType(t.elem, 1 << t.size)])

    def lookup(self, table: Value, idx: Value) -> Value:
        tt, it = table.type, idx.type
        if not isinstance(tt, T.BlockType) or tt.size > 16 or tt.size & (tt.size - 1):
            raise IRTypeError(f"lookup table must be a block of at most 16 entries (a power of two), got {tt}")
        if isinstance(tt.elem, T.PointerType) or tt.elem.bits < 8:
            raise IRTypeError(f"lookup table elements must be 8-64-bit numbers, got {tt.elem}")
        if not isinstance(it, T.BlockType) or it.elem not in (T.uint8, T.int8):
            raise IRTypeError(f"lookup indices must be a block of u8, got {it}")
        if tt.rank != 1:
            raise IRTypeError(f"lookup table must be 1-D, got {tt}")
        if it.rank != 1:
            return self.reshape(self.lookup(table, self.reshape(idx, it.size)), it.shape)
        return self._one("lookup", [table, idx], [T.BlockType(tt.elem, it.size)])

    def pair_madd(self, a: Value, b: Value, ra: Value, rb: Value) -> Value:
        """int16 ra * a + rb * b (saturated) in pair order (lutc/ir/pairs.py)."""
        at = a.type
        if not isinstance(at, T.BlockType) or at.rank != 1 or at.elem != T.int8 or b.type != at:
            raise IRTypeError(f"pair_madd needs two 1-D int8 blocks of one size, got {at} and {b.type}")
        if at.size % 16:
            raise IRTypeError(f"pair_madd needs a multiple of 16 lanes, got {at.size}")
        if ra.type != T.uint8 or rb.type != T.uint8:
            raise IRTypeError(f"pair_madd multipliers must be uint8 scalars, got {ra.type} and {rb.type}")
        return self._one("pair_madd", [a, b, ra, rb], [T.BlockType(T.int16, at.size)])

    def pair_order(self, x: Value) -> Value:
        """A pair-ordered block back in lane order (the order is the target's: lutc/backend/pairs.py)."""
        t = x.type
        if not isinstance(t, T.BlockType) or t.rank != 1 or t.size % 16:
            raise IRTypeError(f"pair_order needs a 1-D block of a multiple of 16 lanes, got {t}")
        return self._one("pair_order", [x], [t])

    def concat(self, a: Value, b: Value) -> Value:
        if not (isinstance(a.type, T.BlockType) and isinstance(b.type, T.BlockType)) or a.type.elem != b.type.elem \
                or a.type.rank != 1 or b.type.rank != 1:
            raise IRTypeError(f"concat needs two blocks of one dtype, got {a.type} and {b.type}")
        return self._one("concat", [a, b], [T.BlockType(a.type.elem, a.type.size + b.type.size)])

    def slice(self, v: Value, start: int, size: int) -> Value:
        if not isinstance(v.type, T.BlockType) or v.type.rank != 1 or start < 0 or start + size > v.type.size or size < 1:
            raise IRTypeError(f"slice [{start}:{start + size}] out of range for {v.type}")
        return self._one("slice", [v], [T.BlockType(v.type.elem, size)], {"start": start, "size": size})

    # -- target-level ops produced by lowering passes
    def shuffle_bytes(self, table16: Value, idx: Value) -> Value:
        return self._one("shuffle_bytes", [table16, idx], [T.BlockType(T.uint8, idx.type.size)])

    def bytes_split(self, table: Value):
        n = table.type.elem.nbytes
        rts = [T.BlockType(T.uint8, table.type.size)] * n
        return self._emit("bytes_split", [table], rts).results

    def bytes_combine(self, planes, dtype: T.DType) -> Value:
        return self._one("bytes_combine", list(planes), [T.BlockType(dtype, planes[0].type.size)],
                         {"to": dtype})

    # -- control flow
    def for_op(self, lo: Value, hi: Value, step: Value, inits):
        """Create a `for` op; returns (op, body region). Caller fills the body and yields."""
        body = Region([T.int32] + [v.type for v in inits])
        op = self._emit("for", [lo, hi, step] + list(inits), [v.type for v in inits], regions=[body])
        return op, body

    def if_op(self, cond: Value, result_types):
        then_r, else_r = Region(), Region()
        op = self._emit("if", [cond], list(result_types), regions=[then_r, else_r])
        return op, then_r, else_r

    def yield_(self, values):
        self._emit("yield", list(values), [])


MAX_LANES = 4096


def _block(elem, shape) -> T.BlockType:
    """A new block type, at most MAX_LANES lanes (one LLVM vector)."""
    t = T.block(elem, shape)
    if t.size > MAX_LANES:
        raise IRTypeError(f"a block of shape {t.shape} has {t.size} lanes; blocks hold at most {MAX_LANES}")
    return t


def _int_range(dt: T.DType):
    if dt == T.int1:
        return 0, 1
    if dt.kind == "uint":
        return 0, (1 << dt.bits) - 1
    return -(1 << (dt.bits - 1)), (1 << (dt.bits - 1)) - 1
