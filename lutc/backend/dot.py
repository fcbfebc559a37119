"""Lowering of `dot`: (M, K) x (K, N) blocks, flat row-major LLVM vectors, per target.

Integer dots (u8/i8 x i8 and i8 x u8 -> i32) are exact: every path computes the int32 sum modulo 2**32,
as numpy's int32 matmul does.

- Group dots (`GroupDot`): one instruction adds, to each of L i32 lanes, the dot product of P
  consecutive byte (or i16) pairs. For output row m, column chunk c and k-group g it reads
  A[m, gP:gP+P] repeated in every lane and B[gP:gP+P, cL:cL+L] column by column; lanes past K
  or N read zeros.
    x86 AVX-512 VNNI / AVX-VNNI   vpdpbusd      P=4, u8 x s8          L = 16 (zmm) or 8 (ymm)
    x86 AVX2 (ranges proven)      vpmaddubsw + vpmaddwd(ones)  P=4    L = 8 (16 with AVX-512BW)
    x86 AVX2 / AVX-512BW / SSE2   vpmovsx/zxbw + vpmaddwd      P=2    L = 8 / 16 / 4
    x86, i16 x i16 operands       vpmaddwd      P=2, i16 x i16        L = 8 / 16 / 4 (`choose_i16`)
    AArch64 +dotprod              sdot          P=4, s8 x s8          L = 4
    AArch64 +i8mm, u8 A, M or N 1 usdot         P=4, u8 x s8          L = 4
  AArch64 +i8mm with M, N > 1 uses `smmla` / `usmmla` instead (`mmla_dot`): 2 x 2 output tiles.
  When A's signedness differs from the instruction's, A is XORed with 0x80 (A + 128 read as
  u8, or A - 128 read as s8: A + d) and d * colsum(B) is subtracted: the same instruction run
  on a row of 0x80 bytes computes exactly that correction.
  Signed A, unsigned B (i8 x u8): the u8 operand is B, so the instruction runs as
  insn(acc, B chunk, A group broadcast) (vpdpbusd, vpmaddubsw, usdot; usmmla on C^T = B^T A^T).
  On x86 an A loaded from memory then becomes vpdpbusd's embedded {1to16} broadcast operand:
  a load, not a shuffle on vpdpbusd's ports. sdot XORs B with 0x80 and adds back 128 times
  each row sum of A.
  vpmaddubsw saturates each pair sum to i16; it is used only when lutc/ir/ranges.py proves the
  operand ranges make saturation impossible (u8 x [-64, 64], [0, 127] x s8, see `maddubs_safe`). Otherwise
  AVX2 sign/zero-extends to i16 and uses vpmaddwd, whose pair sums (at most 2 * 255 * 128 in
  magnitude) cannot overflow i32.
- Portable (`portable_dot`): acc += A[:, k] (x) B[k, :] on the whole (M, N) block per k, in i32
  (or f32): bit-exact for integers; the reference for every other path.
"""
from __future__ import annotations

import llvmlite.ir as ir

from ..ir import types as T
from ..ir.ranges import maddubs_safe, value_range
from .irutil import concat_rows, const_vec

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)


def _shuffle(b, v, idx):
    """Lanes of v by index; an index of len(v) (or more) reads 0."""
    zero = ir.Constant(v.type, None)
    return b.shuffle_vector(v, zero, const_vec(I32, idx))


class GroupDot:
    """One group-dot instruction: name, P (pairs per lane), L (i32 lanes), A and B element
    signedness it reads, and whether bytes are widened to i16 first."""

    def __init__(self, insn, P, L, a_signed, widen=False):
        self.insn, self.P, self.L, self.a_signed, self.widen = insn, P, L, a_signed, widen

    def step(self, cg, acc, av, bv):
        b, L = cg.b, self.L
        if self.insn == "vpdpbusd":
            return self._call(cg, f"llvm.x86.avx512.vpdpbusd.{32 * L}", [acc, av, bv])
        if self.insn in ("sdot", "usdot"):
            return self._call(cg, f"llvm.aarch64.neon.{self.insn}.v4i32.v16i8", [acc, av, bv])
        if self.insn == "vpmaddwd":
            return b.add(acc, self._call(cg, _PMADDWD[L], [av, bv], ret=acc.type))
        if self.insn == "vpmaddubsw":
            wide = ir.VectorType(I16, 2 * L)
            pairs = self._call(cg, _PMADDUBSW[L], [av, bv], ret=wide)
            ones = ir.Constant(wide, [1] * (2 * L))
            return b.add(acc, self._call(cg, _PMADDWD[L], [pairs, ones], ret=acc.type))
        raise NotImplementedError(self.insn)

    @staticmethod
    def _call(cg, name, args, ret=None):
        ret = ret or args[0].type
        fn = cg.intr.declare(name, ret, [a.type for a in args])
        return cg.b.call(fn, args)


_PMADDWD = {4: "llvm.x86.sse2.pmadd.wd", 8: "llvm.x86.avx2.pmadd.wd", 16: "llvm.x86.avx512.pmaddw.d.512"}
_PMADDUBSW = {8: "llvm.x86.avx2.pmadd.ub.sw", 16: "llvm.x86.avx512.pmaddubs.w.512"}


def choose(target, a_dt, n, a_range, b_range, b_dt=T.int8):
    """The GroupDot for this target and operands (A `a_dt` in a_range, B `b_dt` in b_range; at most
    one of them u8), or None for the portable lowering."""
    wide = target.vector_bits >= 512 and n > 8
    u8 = T.uint8 in (a_dt, b_dt)
    safe = maddubs_safe(b_range, a_range) if b_dt == T.uint8 else a_dt == T.uint8 and maddubs_safe(a_range, b_range)
    if target.is_x86:
        if target.has("avx512vnni") and wide:
            return GroupDot("vpdpbusd", 4, 16, a_signed=False)
        if target.has("avxvnni") or (target.has("avx512vnni") and target.has("avx512vl")):
            return GroupDot("vpdpbusd", 4, 8, a_signed=False)
        bw = wide and target.has("avx512bw")
        if target.has("avx2") and safe:
            return GroupDot("vpmaddubsw", 4, 16 if bw else 8, a_signed=False)
        if bw:
            return GroupDot("vpmaddwd", 2, 16, a_signed=None, widen=True)
        if target.has("avx2"):
            return GroupDot("vpmaddwd", 2, 8, a_signed=None, widen=True)
        if target.has("sse2"):
            return GroupDot("vpmaddwd", 2, 4, a_signed=None, widen=True)
        return None
    if target.is_aarch64 and target.has("dotprod"):
        if u8 and target.has("i8mm"):
            return GroupDot("usdot", 4, 4, a_signed=False)
        return GroupDot("sdot", 4, 4, a_signed=True)
    return None


def choose_i16(target, n):
    """The GroupDot for i16 x i16 -> i32 (x86 `vpmaddwd`: two i16 products per i32 lane, whose
    sum wraps only for (-32768)**2 * 2, exactly as the int32 result does), or None (portable)."""
    if not target.is_x86:
        return None
    if target.vector_bits >= 512 and n > 8 and target.has("avx512bw"):
        return GroupDot("vpmaddwd", 2, 16, a_signed=None)
    if target.has("avx2"):
        return GroupDot("vpmaddwd", 2, 8, a_signed=None)
    return GroupDot("vpmaddwd", 2, 4, a_signed=None) if target.has("sse2") else None


def emit_dot(cg, op, a, bm, acc):
    ta, tb = op.operands[0].type, op.operands[1].type
    (M, K), N = ta.shape, tb.shape[1]
    if ta.elem == T.float32:
        return portable_dot(cg, a, bm, acc, M, K, N, T.float32, T.float32)
    t = cg.target
    if t.is_aarch64 and t.has("i8mm") and M > 1 and N > 1:
        if tb.elem == T.uint8:      # C^T = B^T A^T with the u8 operand first
            b = cg.b
            at = _shuffle(b, a, [m * K + k for k in range(K) for m in range(M)])
            bt = _shuffle(b, bm, [k * N + n for n in range(N) for k in range(K)])
            acct = _shuffle(b, acc, [m * N + n for n in range(N) for m in range(M)])
            ct = mmla_dot(cg, "usmmla", bt, at, acct, N, K, M)
            return _shuffle(b, ct, [n * M + m for m in range(M) for n in range(N)])
        return mmla_dot(cg, "usmmla" if ta.elem == T.uint8 else "smmla", a, bm, acc, M, K, N)
    if ta.elem == T.int16:
        plan = choose_i16(t, N)
        if plan is None:
            return portable_dot(cg, a, bm, acc, M, K, N, ta.elem, tb.elem)
        return group_dot(cg, plan, a, bm, acc, M, K, N, ta.elem, tb.elem)
    plan = choose(t, ta.elem, N, value_range(op.operands[0]), value_range(op.operands[1]), tb.elem)
    if plan is None:
        return portable_dot(cg, a, bm, acc, M, K, N, ta.elem, tb.elem)
    return group_dot(cg, plan, a, bm, acc, M, K, N, ta.elem, tb.elem)


def portable_dot(cg, a, bm, acc, M, K, N, a_dt, b_dt):
    b = cg.b
    if a_dt.is_float:
        mul, add = b.fmul, b.fadd
    else:
        ext = lambda v, dt: (b.sext if dt.is_signed else b.zext)(v, ir.VectorType(I32, v.type.count))
        a, bm = ext(a, a_dt), ext(bm, b_dt)
        mul, add = b.mul, b.add
    for k in range(K):
        ak = _shuffle(b, a, [m * K + k for m in range(M) for _ in range(N)])
        bk = _shuffle(b, bm, [k * N + n for _ in range(M) for n in range(N)])
        acc = add(acc, mul(ak, bk))
    return acc


def mmla_dot(cg, insn, a, bm, acc, M, K, N):
    """AArch64 i8mm: `smmla`/`usmmla` adds a (2 x 8) x (8 x 2) int8 product to a 2 x 2 int32 tile.

    For each 2 x 2 output tile (rows 2i, 2i+1; columns 2j, 2j+1) and k-group g of 8, the first
    operand holds A's two rows [2i, 8g:8g+8] and [2i+1, 8g:8g+8], the second B's two columns
    [8g:8g+8, 2j] and [8g:8g+8, 2j+1]; the accumulator lanes are (r, c) = 00, 01, 10, 11. Rows,
    columns and k past the block read zeros. `usmmla` reads A as u8, so no signedness fix.
    """
    b = cg.b
    Mp, Np, groups = -(-M // 2), -(-N // 2), -(-K // 8)
    zero_a, zero_b = M * K, K * N

    def b_vec(j, g):
        return _shuffle(b, bm, [(8 * g + kk) * N + 2 * j + c if 8 * g + kk < K and 2 * j + c < N else zero_b
                                for c in range(2) for kk in range(8)])

    def a_vec(i, g):
        return _shuffle(b, a, [(2 * i + r) * K + 8 * g + kk if 8 * g + kk < K and 2 * i + r < M else zero_a
                               for r in range(2) for kk in range(8)])

    bvecs = [[b_vec(j, g) for g in range(groups)] for j in range(Np)]
    name = f"llvm.aarch64.neon.{insn}.v4i32.v16i8"
    tiles = []
    for i in range(Mp):
        avecs = [a_vec(i, g) for g in range(groups)]
        for j in range(Np):
            v = _shuffle(b, acc, [(2 * i + r) * N + 2 * j + c if 2 * i + r < M and 2 * j + c < N else M * N
                                  for r in range(2) for c in range(2)])
            for g in range(groups):
                v = GroupDot._call(cg, name, [v, avecs[g], bvecs[j][g]])
            tiles.append(v)
    flat = concat_rows(b, tiles)
    return b.shuffle_vector(flat, ir.Constant(flat.type, None), const_vec(
        I32, [((m // 2) * Np + n // 2) * 4 + (m % 2) * 2 + n % 2 for m in range(M) for n in range(N)]))


def group_dot(cg, plan, a, bm, acc, M, K, N, a_dt, b_dt=T.int8):
    """Output row m, column chunk c: v += insn(A[m, group g] in every lane, B[group g, chunk c]).

    B s8 (A u8 or s8): the instruction's first operand is A's broadcast group, its second B's
    vector; an A of the wrong signedness is XORed with 0x80 and fixed by a per-chunk correction.
    B u8 (A s8): the u8 operand is B, so the instruction's first operand is B's vector and its s8
    operand A's broadcast group (x86 folds that broadcast into the instruction as a {1toL} memory
    operand when A was loaded); for `sdot` (s8 x s8) B is XORed with 0x80 and fixed per row.
    """
    b = cg.b
    P, L = plan.P, plan.L
    groups, chunks = -(-K // P), -(-N // L)
    zero_a, zero_b = M * K, K * N  # shuffle indices that read 0
    b_unsigned = b_dt == T.uint8
    fix_a = not b_unsigned and plan.a_signed is not None and plan.a_signed != a_dt.is_signed
    fix_b = b_unsigned and plan.a_signed is True     # sdot: B read as s8 after XOR 0x80
    b_first = b_unsigned and plan.a_signed is False  # the instruction's u8 operand is B's vector
    if fix_a:
        a = b.xor(a, ir.Constant(a.type, [0x80] * (M * K)))
    if fix_b:
        bm = b.xor(bm, ir.Constant(bm.type, [0x80] * (K * N)))
    if plan.widen:
        ext = lambda v, signed: (b.sext if signed else b.zext)(v, ir.VectorType(I16, v.type.count))
        a, bm = ext(a, a_dt.is_signed), ext(bm, b_dt.is_signed)

    def b_vec(g, c):
        idx = []
        for i in range(L):
            for j in range(P):
                k, n = g * P + j, c * L + i
                idx.append(k * N + n if k < K and n < N else zero_b)
        return _shuffle(b, bm, idx)

    def a_vec(m, g):
        idx = [m * K + g * P + j if g * P + j < K else zero_a for _ in range(L) for j in range(P)]
        return _shuffle(b, a, idx)

    bvecs = [[b_vec(g, c) for g in range(groups)] for c in range(chunks)]
    acc_ty = ir.VectorType(I32, L)
    corr = []
    row80 = ir.Constant(bvecs[0][0].type, [0x80] * (L * P))
    if fix_a:
        for c in range(chunks):
            v = ir.Constant(acc_ty, None)
            for g in range(groups):
                v = plan.step(cg, v, row80, bvecs[c][g])
            corr.append(v)
    rows = []
    for m in range(M):
        if fix_b:   # sum_k A[m, k] * (B - 128): add back 128 * sum_k A[m, k]
            row_fix = ir.Constant(acc_ty, None)
            for g in range(groups):
                row_fix = plan.step(cg, row_fix, a_vec(m, g), row80)
        for c in range(chunks):
            v = _shuffle(b, acc, [m * N + c * L + i if c * L + i < N else M * N for i in range(L)])
            if fix_a:
                v = b.sub(v, corr[c])
            if fix_b:
                v = b.sub(v, row_fix)
            for g in range(groups):
                v = plan.step(cg, v, *((bvecs[c][g], a_vec(m, g)) if b_first else (a_vec(m, g), bvecs[c][g])))
            rows.append(v)
    flat = concat_rows(b, rows)
    width = chunks * L
    return b.shuffle_vector(flat, ir.Constant(flat.type, None),
                            const_vec(I32, [m * width + n for m in range(M) for n in range(N)]))


__all__ = ["emit_dot", "choose", "choose_i16", "GroupDot"]
