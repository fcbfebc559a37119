"""LLVM lowering: lutc IR -> llvmlite.ir module (typed IRBuilder, never IR text)."""
from __future__ import annotations

import llvmlite.ir as ir

from ..ir import Function
from ..ir import types as T
from .intrinsics import Intrinsics
from .irutil import const_vec, splat
from .launch_abi import GRID_SLOTS, LAUNCH_FNTY, launch_symbol
from .shapes import ShapeOps
from .target import Target

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType()
POOL_RUN = "lutc_pool_run"


def llvm_type(t):
    if isinstance(t, T.BlockType):
        return ir.VectorType(llvm_type(t.elem), t.size)
    if isinstance(t, T.PointerType):
        return PTR
    if t.is_float:
        return {16: ir.HalfType(), 32: ir.FloatType(), 64: ir.DoubleType()}[t.bits]
    return ir.IntType(t.bits)


class KernelCodegen(ShapeOps):
    """Emits `<name>_task(ctx, pid)` and `<name>_launch(ctx, ntasks, nthreads)` for one Function."""

    def __init__(self, fn: Function, target: Target, module: ir.Module):
        self.fn = fn
        self.target = target
        self.module = module
        self.intr = Intrinsics(module, target)
        self.values = {}

    # ------------------------------------------------------------------ entry points
    def emit(self):
        task_ty = ir.FunctionType(ir.VoidType(), [PTR, I64])
        task = ir.Function(self.module, task_ty, f"{self.fn.name}_task")
        task.linkage = "internal"
        task.attributes.add("nounwind")
        if self.target.is_x86 and self.target.has("avx512f") and self.target.vector_bits < 512:
            limit_vector_width(task, self.target.vector_bits)
        ctx, pid = task.args
        ctx.add_attribute("noalias")
        self.b = ir.IRBuilder(task.append_basic_block("entry"))
        b = self.b
        grid = [b.load(b.gep(ctx, [ir.Constant(I64, i)], source_etype=I64), typ=I64) for i in range(3)]
        g01 = b.mul(grid[0], grid[1])
        pids = [b.urem(pid, grid[0]), b.urem(b.udiv(pid, grid[0]), grid[1]), b.udiv(pid, g01)]
        self.pids = [b.trunc(p, I32) for p in pids]
        self.grid = [b.trunc(g, I32) for g in grid]
        for i, (arg, p) in enumerate(zip(self.fn.body.args, self.fn.params)):
            slot = b.gep(ctx, [ir.Constant(I64, GRID_SLOTS + i)], source_etype=I64)
            raw = b.load(slot, typ=I64)
            self.values[arg] = self._unpack_param(raw, p.type)
        self.region(self.fn.body)
        b.ret_void()
        self._emit_launch(task)
        return task

    def _unpack_param(self, raw, t):
        b = self.b
        if isinstance(t, T.PointerType):
            return b.inttoptr(raw, PTR)
        if t.is_float:
            bits = b.trunc(raw, ir.IntType(t.bits))
            return b.bitcast(bits, llvm_type(t))
        return b.trunc(raw, ir.IntType(t.bits)) if t.bits < 64 else raw

    def _emit_launch(self, task):
        pool_ty = ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64])
        pool = self.module.globals.get(POOL_RUN) or ir.Function(self.module, pool_ty, POOL_RUN)
        launch = ir.Function(self.module, LAUNCH_FNTY, launch_symbol(self.fn.name))
        b = ir.IRBuilder(launch.append_basic_block("entry"))
        ctx, ntasks, nthreads = launch.args
        b.call(pool, [task, ctx, ntasks, nthreads])
        b.ret_void()

    # ------------------------------------------------------------------ regions and ops
    def region(self, region):
        for op in region.ops:
            handler = getattr(self, "op_" + op.opname, None)
            if handler is None:
                raise NotImplementedError(f"no LLVM lowering for IR op '{op.opname}'")
            out = handler(op, [self.values[v] for v in op.operands])
            if out is None:
                continue
            outs = out if isinstance(out, (list, tuple)) else [out]
            for r, v in zip(op.results, outs):
                self.values[r] = v

    def op_yield(self, op, args):
        self._yielded = args

    def op_const(self, op, args):
        return ir.Constant(llvm_type(op.results[0].type), op.attrs["value"])

    def op_program_id(self, op, args):
        return self.pids[op.attrs["axis"]]

    def op_num_programs(self, op, args):
        return self.grid[op.attrs["axis"]]

    def op_arange(self, op, args):
        return const_vec(I32, range(op.attrs["start"], op.attrs["end"]))

    def splat(self, v, n):
        return splat(self.b, v, n)

    def op_splat(self, op, args):
        return self.splat(args[0], op.results[0].type.size)

    def op_binary(self, op, args):
        from .arith import emit_binary
        return emit_binary(self.b, self.intr, op.attrs["kind"], T.scalar_of(op.operands[0].type),
                           args[0], args[1])

    def op_cmp(self, op, args):
        from .arith import emit_cmp
        return emit_cmp(self.b, op.attrs["pred"], T.scalar_of(op.operands[0].type), *args)

    def op_unary(self, op, args):
        from .arith import emit_unary
        return emit_unary(self.b, self.intr, op.attrs["kind"], T.scalar_of(op.operands[0].type), args[0])

    def op_cast(self, op, args):
        from .arith import emit_cast
        return emit_cast(self.b, self.intr, args[0], T.scalar_of(op.operands[0].type), op.attrs["to"],
                         llvm_type(op.results[0].type))

    def op_bitcast(self, op, args):
        if isinstance(op.results[0].type, T.PointerType):
            return args[0]                  # opaque pointers: the element type lives in the IR type
        return self.b.bitcast(args[0], llvm_type(op.results[0].type))

    def op_select(self, op, args):
        return self.b.select(*args)

    def op_reduce(self, op, args):
        dt = T.scalar_of(op.operands[0].type)
        if "axis" not in op.attrs:
            return self.intr.reduce(self.b, op.attrs["kind"], dt, args[0])
        return self.reduce_axis(op, dt, args[0])

    def op_addptr(self, op, args):
        ptr, off = args
        elem = llvm_type(T.scalar_of(op.operands[0].type).elem)
        off_t = T.scalar_of(op.operands[1].type)
        wide = I64 if not isinstance(off.type, ir.VectorType) else ir.VectorType(I64, off.type.count)
        if off_t.bits < 64:
            off = self.b.sext(off, wide) if off_t.is_signed else self.b.zext(off, wide)
        return self.b.gep(ptr, [off], source_etype=elem)

    # ------------------------------------------------------------------ memory
    def _lane0(self, ptrs):
        return self.b.extract_element(ptrs, ir.Constant(I32, 0))

    def op_load(self, op, args):
        rt = op.results[0].type
        lt = llvm_type(rt)
        ptr = args[0]
        access = op.attrs.get("access", "gather")
        mask = args[1] if len(args) > 1 else None
        align = T.scalar_of(rt).nbytes
        if not isinstance(rt, T.BlockType):
            if mask is None:
                return self.b.load(ptr, typ=lt, align=align)
            return self._guarded_scalar_load(ptr, mask, args[2], lt, align)
        if access == "contig":
            base = self._lane0(ptr)
            if mask is None:
                return self.b.load(base, typ=lt, align=align)
            return self.intr.masked_load(self.b, base, mask, args[2], align)
        if access == "rows":
            return self.load_rows(rt, lt, ptr, mask, args[2] if mask is not None else None, align)
        if access == "uniform" and mask is None:
            return self.splat(self.b.load(self._lane0(ptr), typ=lt.element, align=align), rt.size)
        if mask is None:
            mask = const_vec(I1, [1] * rt.size)
            passthru = ir.Constant(lt, ir.Undefined)
        else:
            passthru = args[2]
        return self.intr.masked_gather(self.b, ptr, mask, passthru, align)

    def _guarded_scalar_load(self, ptr, mask, other, lt, align):
        b = self.b
        pred = b.block
        with b.if_then(mask):
            then_bb = b.block
            val = b.load(ptr, typ=lt, align=align)
        phi = b.phi(lt)
        phi.add_incoming(val, then_bb)
        phi.add_incoming(other, pred)
        return phi

    def op_prefetch(self, op, args):
        """llvm.prefetch(ptr, read, locality, data): prefetch* on x86, prfm on AArch64 (LLVM drops it
        on targets without such an instruction)."""
        fn = self.intr.declare("llvm.prefetch.p0", ir.VoidType(), [PTR, I32, I32, I32])
        self.b.call(fn, [args[0], ir.Constant(I32, 0), ir.Constant(I32, op.attrs["locality"]), ir.Constant(I32, 1)])
        return None

    def op_store(self, op, args):
        ptr, val = args[0], args[1]
        mask = args[2] if len(args) > 2 else None
        vt = op.operands[1].type
        align = T.scalar_of(vt).nbytes
        if not isinstance(vt, T.BlockType):
            if mask is None:
                self.b.store(val, ptr, align=align)
            else:
                with self.b.if_then(mask):
                    self.b.store(val, ptr, align=align)
            return None
        if op.attrs.get("access") == "contig":
            base = self._lane0(ptr)
            if mask is None:
                self.b.store(val, base, align=align)
            else:
                self.intr.masked_store(self.b, val, base, mask, align)
            return None
        if op.attrs.get("access") == "rows":
            return self.store_rows(vt, ptr, val, mask, align)
        if mask is None:
            mask = const_vec(I1, [1] * vt.size)
        self.intr.masked_scatter(self.b, val, ptr, mask, align)
        return None

    # ------------------------------------------------------------------ blocks and LUT ops
    def _widen(self, v, n):
        """v padded (with undef lanes) to n lanes."""
        if v.type.count == n:
            return v
        idx = list(range(v.type.count)) + [0] * (n - v.type.count)
        return self.b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), const_vec(I32, idx))

    def op_concat(self, op, args):
        a, b_ = args
        na, nb = a.type.count, b_.type.count
        w = max(na, nb)
        lanes = list(range(na)) + [w + j for j in range(nb)]
        return self.b.shuffle_vector(self._widen(a, w), self._widen(b_, w), const_vec(I32, lanes))

    def op_slice(self, op, args):
        (v,) = args
        s, n = op.attrs["start"], op.attrs["size"]
        return self.b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), const_vec(I32, range(s, s + n)))

    def op_lut_build(self, op, args):
        (xs,) = args
        b = self.b
        g = xs.type.count
        elem = xs.type.element
        table = ir.Constant(ir.VectorType(elem, 1), [0.0])
        for j in range(g):
            n = table.type.count
            xj = b.extract_element(xs, ir.Constant(I32, j))
            plus = b.fadd(table, self.splat(xj, n))
            table = b.shuffle_vector(table, plus, const_vec(I32, range(2 * n)))
        return table

    def op_shuffle_bytes(self, op, args):
        return self.intr.shuffle_bytes(self.b, args[0], args[1])

    def op_pair_madd(self, op, args):
        from .pairs import emit_pair_madd
        return emit_pair_madd(self.b, self.intr, self.target, *args)

    def op_pair_order(self, op, args):
        from .pairs import emit_pair_order
        return emit_pair_order(self.b, self.target, args[0])

    def op_bytes_split(self, op, args):
        (table,) = args
        n = table.type.count
        width = op.operands[0].type.elem.nbytes
        raw = self.b.bitcast(table, ir.VectorType(I8, n * width))
        undef = ir.Constant(raw.type, ir.Undefined)
        return [self.b.shuffle_vector(raw, undef, const_vec(I32, range(p, n * width, width)))
                for p in range(width)]

    def op_bytes_combine(self, op, args):
        b = self.b
        dt = op.attrs["to"]
        n = args[0].type.count
        wide = ir.VectorType(ir.IntType(dt.bits), n)
        acc = None
        for p, plane in enumerate(args):
            v = b.zext(plane, wide)
            if p:
                v = b.shl(v, self.splat(ir.Constant(wide.element, 8 * p), n))
            acc = v if acc is None else b.or_(acc, v)
        return b.bitcast(acc, llvm_type(op.results[0].type))

    # ------------------------------------------------------------------ control flow
    def op_for(self, op, args):
        b = self.b
        lo, hi, step = args[:3]
        inits = args[3:]
        body = op.regions[0]
        pre = b.block
        header = b.append_basic_block("for.header")
        body_bb = b.append_basic_block("for.body")
        exit_bb = b.append_basic_block("for.exit")
        b.branch(header)
        b.position_at_end(header)
        iv = b.phi(I32, "iv")
        phis = [b.phi(v.type) for v in inits]
        iv.add_incoming(lo, pre)
        for p, v in zip(phis, inits):
            p.add_incoming(v, pre)
        b.cbranch(b.icmp_signed("<", iv, hi), body_bb, exit_bb)
        b.position_at_end(body_bb)
        self.values[body.args[0]] = iv
        for a, p in zip(body.args[1:], phis):
            self.values[a] = p
        self.region(body)
        outs = self._yielded
        nxt = b.add(iv, step, flags=["nsw"])
        latch = b.block
        iv.add_incoming(nxt, latch)
        for p, v in zip(phis, outs):
            p.add_incoming(v, latch)
        b.branch(header)
        b.position_at_end(exit_bb)
        return phis

    def op_if(self, op, args):
        b = self.b
        then_bb = b.append_basic_block("if.then")
        else_bb = b.append_basic_block("if.else")
        merge = b.append_basic_block("if.end")
        b.cbranch(args[0], then_bb, else_bb)
        ends = []
        for bb, region in ((then_bb, op.regions[0]), (else_bb, op.regions[1])):
            b.position_at_end(bb)
            self.region(region)
            ends.append((b.block, self._yielded))
            b.branch(merge)
        b.position_at_end(merge)
        outs = []
        for i, r in enumerate(op.results):
            phi = b.phi(llvm_type(r.type))
            for blk, vals in ends:
                phi.add_incoming(vals[i], blk)
            outs.append(phi)
        return outs


def limit_vector_width(fn: ir.Function, bits: int):
    """Keep LLVM's x86 code for `fn` in registers of at most `bits` (LLVM splits wider vectors):
    the string attributes clang sets for -mprefer-vector-width (llvmlite's attribute set only
    lists keyword attributes, so it is extended for these two)."""
    attrs = [f'"min-legal-vector-width"="{bits}"', f'"prefer-vector-width"="{bits}"']
    fn.attributes._known = frozenset(fn.attributes._known | set(attrs))
    for a in attrs:
        fn.attributes.add(a)


def build_module(fn: Function, target: Target) -> ir.Module:
    """One llvmlite module holding the task and launch functions of `fn`."""
    module = ir.Module(name=fn.name)
    module.triple = target.triple
    KernelCodegen(fn, target, module).emit()
    return module
