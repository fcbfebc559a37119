"""LLVM intrinsic declarations (name mangling included) and target byte-shuffle lowering."""
from __future__ import annotations

import llvmlite.ir as ir

from .irutil import splat

I1, I8, I32 = ir.IntType(1), ir.IntType(8), ir.IntType(32)


def mangle(t) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{mangle(t.element)}"
    if isinstance(t, ir.PointerType):
        return "p0"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    return {ir.HalfType: "f16", ir.FloatType: "f32", ir.DoubleType: "f64"}[type(t)]


_UNARY_INTRINSICS = {"round": "llvm.roundeven", "floor": "llvm.floor", "ceil": "llvm.ceil",
                     "sqrt": "llvm.sqrt", "exp": "llvm.exp", "log": "llvm.log", "fabs": "llvm.fabs"}


class Intrinsics:
    """Declares intrinsics on demand in one module and emits calls to them."""

    def __init__(self, module: ir.Module, target):
        self.module = module
        self.target = target

    def declare(self, name, ret, args):
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        return fn

    def call(self, b, base, args, ret=None, fastmath=()):
        """Call an overloaded intrinsic; the mangled suffix comes from ret and arg types."""
        ret = ret or args[0].type
        suffix = mangle(ret)
        if base.endswith(".sat"):
            suffix += "." + mangle(args[0].type)
        fn = self.declare(f"{base}.{suffix}", ret, [a.type for a in args])
        return b.call(fn, args, fastmath=fastmath)

    def unary(self, b, kind, x):
        return self.call(b, _UNARY_INTRINSICS[kind], [x])

    def reduce(self, b, kind, dt, v):
        elem = v.type.element
        if dt.is_float:
            if kind == "sum":
                fn = self.declare(f"llvm.vector.reduce.fadd.{mangle(v.type)}", elem, [elem, v.type])
                return b.call(fn, [ir.Constant(elem, -0.0), v], fastmath=("reassoc",))
            name = "fmax" if kind == "max" else "fmin"
        else:
            name = {"sum": "add", "max": "smax" if dt.is_signed else "umax",
                    "min": "smin" if dt.is_signed else "umin"}[kind]
        fn = self.declare(f"llvm.vector.reduce.{name}.{mangle(v.type)}", elem, [v.type])
        return b.call(fn, [v])

    # -- masked memory (LLVM's masked intrinsics never touch masked-off lanes)
    def masked_load(self, b, ptr, mask, passthru, align):
        vt = passthru.type
        fn = self.declare(f"llvm.masked.load.{mangle(vt)}.p0", vt, [ptr.type, I32, mask.type, vt])
        return b.call(fn, [ptr, ir.Constant(I32, align), mask, passthru])

    def masked_store(self, b, val, ptr, mask, align):
        vt = val.type
        fn = self.declare(f"llvm.masked.store.{mangle(vt)}.p0", ir.VoidType(), [vt, ptr.type, I32, mask.type])
        b.call(fn, [val, ptr, ir.Constant(I32, align), mask])

    def masked_gather(self, b, ptrs, mask, passthru, align):
        vt = passthru.type
        fn = self.declare(f"llvm.masked.gather.{mangle(vt)}.{mangle(ptrs.type)}", vt,
                          [ptrs.type, I32, mask.type, vt])
        return b.call(fn, [ptrs, ir.Constant(I32, align), mask, passthru])

    def masked_scatter(self, b, val, ptrs, mask, align):
        vt = val.type
        fn = self.declare(f"llvm.masked.scatter.{mangle(vt)}.{mangle(ptrs.type)}", ir.VoidType(),
                          [vt, ptrs.type, I32, mask.type])
        b.call(fn, [val, ptrs, ir.Constant(I32, align), mask])

    # -- byte shuffle: out[j] = table[idx[j]] for a 16-byte table and idx < 16
    def shuffle_bytes(self, b, table, idx):
        n = idx.type.count
        kind = self.target.byte_shuffle
        width = self.target.shuffle_bytes_width
        if kind is None:
            return self._select_chain(b, table, idx)
        chunk = 16
        if kind == "pshufb" and width >= 32 and n % 32 == 0:
            chunk = 64 if width >= 64 and n % 64 == 0 else 32
        if n < chunk:  # pad a short index block to one instruction's width
            padded = b.shuffle_vector(idx, ir.Constant(idx.type, ir.Undefined),
                                      ir.Constant(ir.VectorType(I32, chunk), [i % n for i in range(chunk)]))
            out = self._shuffle_chunk(b, kind, table, padded, chunk)
            return b.shuffle_vector(out, ir.Constant(out.type, ir.Undefined),
                                    ir.Constant(ir.VectorType(I32, n), list(range(n))))
        parts = []
        for s in range(0, n, chunk):
            piece = b.shuffle_vector(idx, ir.Constant(idx.type, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, chunk), list(range(s, s + chunk))))
            parts.append(self._shuffle_chunk(b, kind, table, piece, chunk))
        while len(parts) > 1:
            nxt = []
            for a, c in zip(parts[::2], parts[1::2]):
                m = a.type.count * 2
                nxt.append(b.shuffle_vector(a, c, ir.Constant(ir.VectorType(I32, m), list(range(m)))))
            parts = nxt
        return parts[0]

    def _shuffle_chunk(self, b, kind, table, idx, chunk):
        vt = ir.VectorType(I8, chunk)
        if kind == "tbl":
            fn = self.declare("llvm.aarch64.neon.tbl1.v16i8", vt, [table.type, vt])
            return b.call(fn, [table, idx])
        if chunk == 16:
            name = "llvm.x86.ssse3.pshuf.b.128"
            tab = table
        else:
            name = "llvm.x86.avx2.pshuf.b" if chunk == 32 else "llvm.x86.avx512.pshuf.b.512"
            tab = b.shuffle_vector(table, ir.Constant(table.type, ir.Undefined),
                                   ir.Constant(ir.VectorType(I32, chunk), [i % 16 for i in range(chunk)]))
        fn = self.declare(name, vt, [vt, vt])
        return b.call(fn, [tab, idx])

    def _select_chain(self, b, table, idx):
        """Portable lookup for targets without a byte shuffle: 16 compare-and-selects."""
        n = idx.type.count
        out = ir.Constant(idx.type, [0] * n)
        for e in range(16):
            entry = b.extract_element(table, ir.Constant(I32, e))
            spl = splat(b, entry, n)
            hit = b.icmp_unsigned("==", idx, ir.Constant(idx.type, [e] * n))
            out = b.select(hit, spl, out)
        return out
