"""Lowering of `pair_madd` (int16 ra * a + rb * b of two int8 blocks, in pair order) and `pair_order`.

The pair order (lutc/ir/pairs.py) at the target's pair width (`pair_width`) is what x86 produces
without a lane-crossing shuffle:
  x86 AVX-512BW, 512-bit  per 64 lanes: vpunpcklbw / vpunpckhbw (a, b) in zmm, then vpmaddubsw
                          with the u8 multipliers (ra, rb) interleaved: out = [lo, hi] is exactly
                          the width-64 order; a tail of 32 / 16 lanes in ymm / xmm.
  x86 AVX2 (or AVX-512 held to 256 bits)  the same per 32 lanes in ymm (width 32).
  x86 SSSE3               per 16 lanes in xmm, then put in the width-32 order (whole registers).
  elsewhere (AArch64, portable)  sign-extend to i16, multiply, saturating add (sqadd on NEON),
                          then the lanes are put in the width-32 order: 8-lane i16 groups are
                          whole 128-bit registers, so on NEON that reordering is free.
vpmaddubsw saturates each pair sum to int16; the portable form saturates the same way, so
every target computes sat16(ra * a[p(i)] + rb * b[p(i)]) bit for bit.
"""
from __future__ import annotations

import llvmlite.ir as ir

from ..ir.pairs import inverse, pair_order
from .irutil import const_vec, splat

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_MADDUBS = {16: "llvm.x86.ssse3.pmadd.ub.sw.128", 32: "llvm.x86.avx2.pmadd.ub.sw",
            64: "llvm.x86.avx512.pmaddubs.w.512"}


def pair_width(target) -> int:
    """The pair width of `target`'s pair order: 64 on x86 with AVX-512BW and 512-bit vectors,
    else 32."""
    if target.is_x86 and target.has("avx512bw") and target.vector_bits >= 512:
        return 64
    return 32


def emit_pair_order(b, target, v):
    """v (pair order) back in lane order: out[p[i]] = v[i]."""
    return permute(b, v, inverse(pair_order(v.type.count, pair_width(target))))


def permute(b, v, p):
    """out[i] = v[p[i]]."""
    return b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), const_vec(I32, p))


def emit_pair_madd(b, intr, target, a, bv, ra, rb):
    n = a.type.count
    if target.is_x86 and target.byte_shuffle == "pshufb":
        return _x86(b, intr, target, a, bv, ra, rb, n)
    wide = ir.VectorType(I16, n)
    prods = []
    for v, r in ((a, ra), (bv, rb)):
        prods.append(b.mul(b.sext(v, wide), splat(b, b.zext(r, I16), n)))
    fn = intr.declare(f"llvm.sadd.sat.v{n}i16", wide, [wide, wide])
    return permute(b, b.call(fn, prods), pair_order(n, pair_width(target)))


def _x86(b, intr, target, a, bv, ra, rb, n):
    """vpmaddubsw over byte-interleaved (a, b); pieces of 64 (AVX-512BW at 512 bits), 32 (AVX2)
    or 16 lanes, outputs concatenated; the sources of each output lane are tracked and put in
    pair order."""
    same = ra is rb               # one multiplier: a byte broadcast (vpbroadcastb), no 16-bit pattern
    mult16 = None if same else b.or_(b.zext(ra, I16), b.shl(b.zext(rb, I16), ir.Constant(I16, 8)))
    outs, srcs = [], []
    base = 0
    while base < n:
        w = 16
        if pair_width(target) == 64 and base + 64 <= n:
            w = 64
        elif target.has("avx2") and base + 32 <= n:
            w = 32
        idx = list(range(base, base + w))
        pa = permute(b, a, idx)
        pb = permute(b, bv, idx)
        mult = _byte_splat(b, ra, w) if same else b.bitcast(splat(b, mult16, w // 2), ir.VectorType(I8, w))
        fn = intr.declare(_MADDUBS[w], ir.VectorType(I16, w // 2), [mult.type, mult.type])
        for half in (0, 8):           # vpunpcklbw, vpunpckhbw: bytes 0-7 / 8-15 of each 16-byte lane
            lanes = [lane + half + j for lane in range(0, w, 16) for j in range(8)]
            inter = b.shuffle_vector(pa, pb, const_vec(I32, [x for j in lanes for x in (j, j + w)]))
            outs.append(b.call(fn, [mult, inter]))
            srcs += [base + j for j in lanes]
        base += w
    cat = _concat(b, outs)
    want = pair_order(n, pair_width(target))
    where = {s: i for i, s in enumerate(srcs)}
    return permute(b, cat, [where[s] for s in want]) if srcs != want else cat



def _byte_splat(b, r, w):
    """w copies of the i8 r. When r truncates a 32-bit value (the kernels' integer ratios: a float's
    bits minus a constant, gemm.round_i32), the copies are of that value's low byte (x86 is
    little-endian), read from a vector holding it: adding or subtracting a constant whose low byte
    is 0 leaves the low byte alone, so a float's bits stay in a vector register (vpbroadcastb)
    instead of going through a general register and back (vmovd twice)."""
    src = r.operands[0] if isinstance(r, ir.CastInstr) and r.opname == "trunc" and r.operands[0].type == I32 else None
    while src is not None and getattr(src, "opname", None) in ("add", "sub"):
        x, c = src.operands
        if isinstance(c, ir.Constant) and isinstance(c.constant, int) and c.constant & 0xFF == 0:
            src = x
        elif src.opname == "add" and isinstance(x, ir.Constant) and isinstance(x.constant, int) and x.constant & 0xFF == 0:
            src = c
        else:
            break
    if isinstance(src, ir.CastInstr) and src.opname == "bitcast" and isinstance(src.operands[0].type, ir.FloatType):
        src = src.operands[0]
    if src is None:
        return splat(b, r, w)
    vt = ir.VectorType(src.type, 4)
    v = b.bitcast(b.insert_element(ir.Constant(vt, ir.Undefined), src, ir.Constant(I32, 0)), ir.VectorType(I8, 16))
    return b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), const_vec(I32, [0] * w))


def _concat(b, outs):
    """The vectors one after another (widths may differ: a 16-lane tail after 32-lane pieces)."""
    acc = outs[0]
    for o in outs[1:]:
        na, nb = acc.type.count, o.type.count
        w = max(na, nb)
        wa = acc if na == w else permute(b, acc, list(range(na)) + [0] * (w - na))
        wb = o if nb == w else permute(b, o, list(range(nb)) + [0] * (w - nb))
        acc = b.shuffle_vector(wa, wb, const_vec(I32, list(range(na)) + [w + j for j in range(nb)]))
    return acc
