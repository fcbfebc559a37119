"""LLVM lowering of 2-D block ops (a mixin of KernelCodegen): a block of shape (rows, cols) is one
flat vector in row-major order, so reshape is free, broadcasts and transposes are shuffles, axis
reductions combine rows or columns lane-wise, and 2-D loads/stores whose rows are contiguous
('rows' access, from passes.analyze_access) are one vector access per row."""
from __future__ import annotations

import llvmlite.ir as ir

from .dot import emit_dot
from .irutil import concat_rows, const_vec

I32 = ir.IntType(32)


class ShapeOps:
    """op_* handlers for reshape, broadcast, transpose and dot, and 2-D helpers for the rest."""

    def _lanes(self, v, idx):
        return self.b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), const_vec(I32, idx))

    def reduce_axis(self, op, dt, v):
        from .arith import emit_binary
        (rows, cols), axis = op.operands[0].type.shape, op.attrs["axis"]
        kind = "add" if op.attrs["kind"] == "sum" else op.attrs["kind"]
        acc = None
        for j in range(rows if axis == 0 else cols):  # combine the rows (axis 0) or columns (axis 1)
            idx = [j * cols + c for c in range(cols)] if axis == 0 else [r * cols + j for r in range(rows)]
            part = self._lanes(v, idx)
            acc = part if acc is None else emit_binary(self.b, self.intr, kind, dt, acc, part)
        return acc

    def op_reshape(self, op, args):
        return args[0]  # blocks are flat row-major vectors whatever their shape

    def op_broadcast(self, op, args):
        src, shape = op.operands[0].type.shape, op.attrs["shape"]
        if len(src) == 1:
            return self._lanes(args[0], [0] * shape[0])
        rows, cols = shape
        return self._lanes(args[0], [(r if src[0] > 1 else 0) * src[1] + (c if src[1] > 1 else 0)
                                     for r in range(rows) for c in range(cols)])

    def op_transpose(self, op, args):
        rows, cols = op.operands[0].type.shape
        return self._lanes(args[0], [r * cols + c for c in range(cols) for r in range(rows)])

    def op_dot(self, op, args):
        return emit_dot(self, op, *args)

    # -- 'rows' access: each row's lanes are consecutive in memory from its first pointer
    def _row(self, v, r, cols):
        return self._lanes(v, range(r * cols, (r + 1) * cols))

    def _native_masks(self, elem_bytes):
        """Whether masked vector loads/stores of this element size are instructions here (AVX-512BW
        for bytes and halves, AVX for 4/8 bytes); elsewhere LLVM expands them lane by lane."""
        t = self.target
        if not t.is_x86:
            return False
        return t.has("avx512bw") if elem_bytes < 4 else t.has("avx")

    def _all_set(self, m):
        fn = self.intr.declare(f"llvm.vector.reduce.and.v{m.type.count}i1", m.type.element, [m.type])
        return self.b.call(fn, [m])

    def load_rows(self, rt, lt, ptr, mask, other, align):
        rows, cols = rt.shape
        row_t = ir.VectorType(lt.element, cols)
        fast = mask is not None and not self._native_masks(rt.elem.nbytes)
        b, parts = self.b, []
        for r in range(rows):
            base = b.extract_element(ptr, ir.Constant(I32, r * cols))
            if mask is None:
                parts.append(b.load(base, typ=row_t, align=align))
                continue
            rmask, rother = self._row(mask, r, cols), self._row(other, r, cols)
            if not fast:
                parts.append(self.intr.masked_load(b, base, rmask, rother, align))
                continue
            # a full row (the common case inside the matrix) is one plain vector load
            with b.if_else(self._all_set(rmask)) as (full, partial):
                with full:
                    v_full, bb_full = b.load(base, typ=row_t, align=align), b.block
                with partial:
                    v_part, bb_part = self.intr.masked_load(b, base, rmask, rother, align), b.block
            phi = b.phi(row_t)
            phi.add_incoming(v_full, bb_full)
            phi.add_incoming(v_part, bb_part)
            parts.append(phi)
        return concat_rows(b, parts)

    def store_rows(self, vt, ptr, val, mask, align):
        rows, cols = vt.shape
        fast = mask is not None and not self._native_masks(vt.elem.nbytes)
        b = self.b
        for r in range(rows):
            base = b.extract_element(ptr, ir.Constant(I32, r * cols))
            v = self._row(val, r, cols)
            if mask is None:
                b.store(v, base, align=align)
                continue
            rmask = self._row(mask, r, cols)
            if not fast:
                self.intr.masked_store(b, v, base, rmask, align)
                continue
            with b.if_else(self._all_set(rmask)) as (full, partial):
                with full:
                    b.store(v, base, align=align)
                with partial:
                    self.intr.masked_store(b, v, base, rmask, align)
