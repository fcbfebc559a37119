"""The int8 dot-product GEMM (a Schedule's `path="dot"`), written in the lutc DSL.

It reads the same packed weights as lut_gemm (packing.py: bit-planes of the codes, fp16 plane
scales s_b and zero z per (row, group)); no other weight array exists. A call is the same two
launches as the LUT path, with the same parameters (spec.py):

    quantize_x  grid (M, NG)       x -> luts (int8 activations xq), lut_scales (xs), xsums
    dot_gemm    grid (num_tiles,)  w, sz, luts, lut_scales, xsums -> y

Weights: HLQ is w = sum_b s_b * bit_b + z. Per (row, group) the kernel maps the plane scales to
integers q_b = round(|s_b| * (WMAX - BITS / 2) / sum_b |s_b|) (so sum_b q_b <= WMAX), fits one
step = sum_b q_b |s_b| / sum_b q_b^2 (least squares: |s_b| ~ step * q_b), and decodes (32, BNS)
tiles of u8 levels sum_b q_b * bit_b' (bit_b' = bit_b, flipped where s_b < 0; the flip's constant
part moves into the zero: z' = z + sum_b min(s_b, 0)). Only q_b's rounding is approximate.
WMAX = 255 where the dot instruction reads u8 x s8 for any values (vpdpbusd, sdot/usdot,
vpmaddwd), 127 on AVX2 without VNNI so that vpmaddubsw provably cannot saturate (docs/dsl.md),
see `level_max`.

Activations: per row and block of XB (act_block, at most a group), s = max|x| / 127,
xq = round(x / s) (llama.cpp's Q8 quantization); with RES (act_residual) also the residual
xq2 = round((x - s * xq) / (s / 254)), so x ~ s * (xq + xq2 / 254) to ~15 bits: a second dot per
slice, needed for LLM activations (one int8 scale per block: +3% perplexity on SmolLM2, see
docs/runtime.md). On AVX2 without VNNI (`act_i16`, constexpr A16) the two are stored as one int16
254 xq + xq2 (|.| <= 254 * 127 + 127 = 32385) in the same bytes, and one i16 x i16 tl.dot
(vpmaddwd: two products per i32 lane, no saturation) against the levels widened to int16 computes
254 dot(xq, level) + dot(xq2, level) exactly: half the multiplies of vpmaddubsw + vpmaddwd twice,
and levels up to 255 (|sum| <= XB * 32385 * 255 < 2**31 for XB <= 256). It runs KH = 8 columns
per tl.dot so the (8, BNS) int16 levels stay in the 16 ymm registers.

Stored per block of BM rows and 32 columns, row-major [row][column % 32] (then the residual
block, or the int16 values), so that tl.dot(xq (BM, 32), levels (32, BNS)) reads each row's 4-byte
groups straight from memory: on VNNI hosts every vpdpbusd takes its activation group as an
embedded {1to16} broadcast (a load, no shuffle) and the levels as a register (docs/dsl.md,
"signed A, unsigned B"). xsums[m, grp] is the exact float sum of the group's activations (the
factor of the zero term), stored [m-block][grp][row].

    y[m, n] = sum_grp ( sum_sb step[n, grp] * xs[m, sb] * (dot(xq, level) + dot(xq2, level) / 254)[m, n, sb]
                        + z'[n, grp] * xsum[m, grp] )

Each program owns BN weight rows (one packed tile) and all M activation rows; per (BM, BNS) output
block it walks the groups, decodes each 32-column weight slice once (levels are built directly in
the order the group dot reads them, so no interleaving shuffles) and runs tl.dot on it,
accumulating int32 over an activation-scale block, then float. The default 8 x 16 block keeps
its 16 int32 accumulators (8 with the residual off) and one slice's 8 level vectors in zmm
registers.
"""
from __future__ import annotations

import lutc.language as tl
from lutc.jitfunction import jit
from lutc.kernels.gemm import plane_row, round_i8, round_i32

QB = 32        # columns per decoded weight slice and per xq block


def level_max(target="host", residual=False) -> int:
    """WMAX for `target` (and a dot path with the residual or not): 127 where capping u8 levels at
    127 lets tl.dot use vpmaddubsw (AVX2 without VNNI, no residual), else 255 (full u8 range; also
    the int16 form `act_i16`, whose vpmaddwd cannot saturate)."""
    if residual and act_i16(target):
        return 255
    plan = _group_dot(target)[1]
    return 127 if plan is not None and plan.insn == "vpmaddubsw" else 255


def _group_dot(target="host", wmax=127):
    """(target, tl.dot's plan for u8 levels in 0..wmax x s8 activations on it, or None)."""
    from ..backend.dot import choose
    from ..backend.target import get_target
    from ..ir import types as T
    t = get_target(target)
    return t, choose(t, T.uint8, 64, (0, wmax), (-128, 127))


def act_i16(target="host") -> bool:
    """Whether the dot path with the residual runs as one int16 dot (A16) on `target`: where the
    u8 x s8 group dot is AVX2's two-instruction vpmaddubsw + vpmaddwd (no VNNI). Per 4 weights and
    8 output lanes, the int8 dot and the residual's second one cost 2 vpmaddubsw + 2 vpmaddwd, the
    int16 form 2 vpmaddwd; its levels go up to 255 (vpmaddwd cannot saturate). Measured on
    256-bit vectors only (docs/runtime.md, "Zen 3 (AVX2) prefill"): 512-bit targets without VNNI
    (x86-avx512) keep the int8 form."""
    t, plan = _group_dot(target)
    return plan is not None and plan.insn == "vpmaddubsw" and t.vector_bits <= 256


DOT_INSNS = {"vpdpbusd": 1, "sdot": 1, "usdot": 1, "vpmaddubsw": 2}   # instructions per u8 x s8 group dot


def dot_insns(target="host") -> int | None:
    """Instructions one 4-byte group dot of the dot path costs on `target` (vpmaddubsw needs a
    vpmaddwd after it; 1 where `act_i16`: its two vpmaddwd per 4 weights carry the residual too,
    the cost of a one-instruction dot plus the residual's), or None where tl.dot has no group-dot
    instruction for it (the portable lowering: the default never takes the dot path there)."""
    if act_i16(target):
        return 1
    plan = _group_dot(target, level_max(target))[1]
    return None if plan is None else DOT_INSNS.get(plan.insn)


@jit
def quantize_x(x, luts, lut_scales, xsums, K, NG, GS: tl.constexpr, BM: tl.constexpr, XB: tl.constexpr,
               RES: tl.constexpr, A16: tl.constexpr):
    """Program (m, grp): row m's GS activations of group grp as int8, one scale per XB of them, and
    their exact float sum. RES: also the int8 residual q2 = round((x - s * q) / (s / 254))."""
    m = tl.program_id(0)
    grp = tl.program_id(1)
    SPG: tl.constexpr = GS // XB
    CPS: tl.constexpr = XB // QB
    mb = m // BM
    mi = m % BM
    lane = tl.arange(0, QB)
    xsum = 0.0
    for sb in tl.static_range(SPG):
        amax = 0.0
        for c in tl.static_range(CPS):
            k = grp * GS + (sb * CPS + c) * QB + lane
            v = tl.load(x + m * K + k, mask=k < K, other=0.0)
            xsum += tl.sum(v)
            amax = tl.maximum(amax, tl.max(tl.abs(v)))
        s = amax / 127.0
        safe = tl.where(s > 0.0, s, 1.0)         # v / s, not v * (127 / amax): no overflow for tiny amax
        for c in tl.static_range(CPS):
            kb = grp * (GS // QB) + sb * CPS + c
            k = kb * QB + lane
            v = tl.load(x + m * K + k, mask=k < K, other=0.0)
            # one contiguous row of QB bytes; round_i8 keeps the conversion vectorized
            dst = luts + (mb * NG * (GS // QB) + kb) * (QB * BM * (1 + RES)) + mi * QB + lane
            q = tl.round(v / safe)
            if A16:                               # one i16 254 q + r in the same bytes (|.| <= 32385)
                r = tl.round((v - q * s) / (safe * (1.0 / 254.0)))
                dst16 = tl.bitcast(luts, tl.int16) + (mb * NG * (GS // QB) + kb) * (QB * BM) + mi * QB + lane
                tl.store(dst16, round_i32(q * 254.0 + r).to(tl.int16))
            else:
                tl.store(dst, round_i8(q))
                if RES:
                    r = tl.round((v - q * s) / (safe * (1.0 / 254.0)))
                    tl.store(dst + QB * BM, round_i8(r))
        tl.store(lut_scales + ((mb * NG + grp) * SPG + sb) * BM + mi, s)
    tl.store(xsums + (mb * NG + grp) * BM + mi, xsum)


@jit
def _w_pair(w_group, c, q4, flips, BITS: tl.constexpr, BN: tl.constexpr, BNS: tl.constexpr,
            CPG: tl.constexpr, PLANE_MAJOR: tl.constexpr, WMAX: tl.constexpr):
    """Levels of packed byte column c (8 weight columns = 2 k-groups of 4): the flat (2, 4, BNS)
    block [group][k % 4][n] of two transposed (BNS, 4) tiles. Bit i of a packed byte = column i."""
    lane = tl.arange(0, 4)
    lo = tl.zeros((BNS, 4), tl.uint8)
    hi = tl.zeros((BNS, 4), tl.uint8)
    for b in tl.static_range(BITS):
        p = w_group + plane_row(b, c, BITS, CPG, PLANE_MAJOR) * BN + tl.arange(0, BNS)
        t4 = tl.broadcast_to((tl.load(p) ^ flips[b])[:, None], (BNS, 4))
        lo += tl.where((t4 & (1 << lane).to(tl.uint8)[None, :]) != 0, q4[b], 0)
        hi += tl.where((t4 & (16 << lane).to(tl.uint8)[None, :]) != 0, q4[b], 0)
    if WMAX == 127:
        lo = lo & 127                             # a no-op (sum q_b <= 127) that proves the range
        hi = hi & 127
    return tl.concat(tl.reshape(tl.trans(lo), (4 * BNS,)), tl.reshape(tl.trans(hi), (4 * BNS,)))


@jit
def _w_levels(w_group, c0, q4, flips, BITS: tl.constexpr, BN: tl.constexpr, BNS: tl.constexpr,
              CPG: tl.constexpr, PLANE_MAJOR: tl.constexpr, WMAX: tl.constexpr, NCOL: tl.constexpr):
    """The (8 NCOL, BNS) u8 levels L[k, n] = sum_b q_b[n] * bit_b[n, k] of packed byte columns
    c0 .. c0 + NCOL - 1 of a group (bit flipped where s_b < 0; q4[b] is q_b broadcast to (BNS, 4)).
    Decoded per k-group of 4 columns as a (BNS, 4) tile [n][k % 4]: the order in which tl.dot's
    group lanes read an (i8 x u8) B operand, so the transposes and concatenations compose with the
    dot's own operand shuffles to nothing."""
    flat = _w_pair(w_group, c0, q4, flips, BITS, BN, BNS, CPG, PLANE_MAJOR, WMAX)
    for cb in tl.static_range(1, NCOL):
        flat = tl.concat(flat, _w_pair(w_group, c0 + cb, q4, flips, BITS, BN, BNS, CPG, PLANE_MAJOR, WMAX))
    return tl.reshape(flat, (8 * NCOL, BNS))


@jit
def _group_params(sz_g, BITS: tl.constexpr, BN: tl.constexpr, BNS: tl.constexpr, LIM: tl.constexpr):
    """From a group's fp16 plane scales and zero (BNS rows): the zero z' (flips folded in), the
    step, the integer plane weights q_b broadcast to (BNS, 4) u8 and the flip masks (255 where
    s_b < 0)."""
    zero = tl.load(sz_g + BITS * BN + tl.arange(0, BNS)).to(tl.float32)
    scales = [tl.load(sz_g + b * BN + tl.arange(0, BNS)).to(tl.float32) for b in tl.static_range(BITS)]
    tot = tl.zeros((BNS,), tl.float32)
    for b in tl.static_range(BITS):
        tot += tl.abs(scales[b])
        zero += tl.minimum(scales[b], 0.0)
    inv = tl.where(tot > 0.0, LIM / tl.where(tot > 0.0, tot, 1.0), 0.0)
    qf = [tl.round(tl.abs(scales[b]) * inv) for b in tl.static_range(BITS)]
    num = tl.zeros((BNS,), tl.float32)
    den = tl.zeros((BNS,), tl.float32)
    for b in tl.static_range(BITS):
        num += qf[b] * tl.abs(scales[b])
        den += qf[b] * qf[b]
    step = num / tl.where(den > 0.0, den, 1.0)      # least-squares fit of |s_b| ~ step * q_b
    # qf[b] is a whole number in [0, 255]: exact through round_i32 (a float -> int cast is scalarized)
    q4 = [tl.broadcast_to(round_i32(qf[b]).to(tl.uint8)[:, None], (BNS, 4)) for b in tl.static_range(BITS)]
    flips = [tl.where(scales[b] < 0.0, 255, 0).to(tl.uint8) for b in tl.static_range(BITS)]
    return zero, step, q4, flips


@jit
def dot_gemm(w, sz, luts, lut_scales, xsums, y, M, N, NG,
             BITS: tl.constexpr, BN: tl.constexpr, CPG: tl.constexpr, PLANE_MAJOR: tl.constexpr,
             GS: tl.constexpr, BM: tl.constexpr, BNS: tl.constexpr, XB: tl.constexpr, WMAX: tl.constexpr,
             RES: tl.constexpr, A16: tl.constexpr, KH: tl.constexpr):
    """One program per tile of BN weight rows: y[:, tile] for every activation row, in (BM
    activation rows, BNS weight rows) output blocks: per 32-column slice, the levels are decoded
    once and tl.dot(xq (BM, 32) i8, levels (32, BNS) u8) accumulates int32 over an activation-scale
    block, then float."""
    tl.static_assert(BN % BNS == 0, "BNS must divide BN")
    tile = tl.program_id(0)
    w_tile = w + tile * (NG * CPG * BITS * BN)
    sz_tile = sz + tile * (NG * (BITS + 1) * BN)
    SPG: tl.constexpr = GS // XB
    CPS: tl.constexpr = XB // QB
    LIM: tl.constexpr = WMAX - 0.5 * BITS
    XBLK: tl.constexpr = QB * BM * (1 + RES)          # bytes of one (BM rows, 32 columns) activation block
    rm = tl.arange(0, BM)
    for m0 in range(0, M, BM):
        mb = m0 // BM
        for n0 in range(0, BN, BNS):
            acc = tl.zeros((BM, BNS), tl.float32)
            for grp in range(NG):
                zero, step, q4, flips = _group_params(sz_tile + grp * ((BITS + 1) * BN) + n0, BITS, BN, BNS, LIM)
                w_group = w_tile + grp * (CPG * BITS * BN) + n0
                xoff = (mb * NG + grp) * (GS // QB) * XBLK
                xg = luts + xoff
                for sb in range(SPG):
                    d = tl.zeros((BM, BNS), tl.int32)
                    d2 = tl.zeros((BM, BNS), tl.int32)
                    if A16:
                        for c in range(CPS * (QB // KH)):   # K = KH per dot: its KH / 2 level vectors stay in registers
                            kh = sb * CPS * (QB // KH) + c
                            lvl = _w_levels(w_group, kh * (KH // 8), q4, flips, BITS, BN, BNS, CPG, PLANE_MAJOR, WMAX, KH // 8)
                            x16 = tl.bitcast(luts, tl.int16) + (xoff + (kh // (QB // KH)) * XBLK) // 2 + (kh % (QB // KH)) * KH
                            xa = tl.load(x16 + (rm[:, None] * QB + tl.arange(0, KH)[None, :]))   # one constant offset block
                            d = tl.dot(xa, lvl.to(tl.int16), d)     # i16 254 xq + xq2: d = 254 d + d2
                    else:
                        for c in range(CPS):        # a loop, not unrolled: one slice's levels live at a time
                            kbl = sb * CPS + c
                            lvl = _w_levels(w_group, kbl * (QB // 8), q4, flips, BITS, BN, BNS, CPG, PLANE_MAJOR, WMAX, QB // 8)
                            xb = xg + kbl * XBLK
                            d = tl.dot(tl.reshape(tl.load(xb + tl.arange(0, BM * QB)), (BM, QB)), lvl, d)
                            if RES:
                                d2 = tl.dot(tl.reshape(tl.load(xb + BM * QB + tl.arange(0, BM * QB)), (BM, QB)), lvl, d2)
                    sx = tl.load(lut_scales + ((mb * NG + grp) * SPG + sb) * BM + rm)
                    df = d.to(tl.float32)
                    if A16:
                        df = df * (1.0 / 254.0)
                    elif RES:
                        df += d2.to(tl.float32) * (1.0 / 254.0)
                    acc += df * (sx[:, None] * step[None, :])
                xsum = tl.load(xsums + (mb * NG + grp) * BM + rm)
                acc += xsum[:, None] * zero[None, :]
            y_n = y + m0 * N + tile * BN + n0          # scalars folded into the base pointer (docs/dsl.md)
            tl.store(y_n + rm[:, None] * N + tl.arange(0, BNS)[None, :], acc,
                     mask=(rm < M - m0)[:, None] & (tl.arange(0, BNS) < N - (tile * BN + n0))[None, :])
