"""The LUT-GEMM kernels, written in the lutc DSL: table construction and table-lookup GEMM.

y[m, n] = sum_groups( sum_blocks sum_b s_b[n, grp] * P_b[m, n, grp, blk] * lut_scale[m, grp, blk]
                      + z[n, grp] * xsum[m, grp] )
(with integer block ratios lut_scale[m, grp, blk] = r[m, grp, blk] * unit[m, grp], summed as
 unit * sum_b s_b * (sum_blocks r * P_b) with the inner sum in int16)
where P_b sums, over the tables of one scale block of a group, table[idx_b(n, t)] and
idx_b(n, t) is formed by bit-plane b of the g weights of row n that table t covers.
With PAIR (Schedule.lut_pair) the two lookups of a packed byte enter those sums together,
r * (a + b) by one tl.pair_madd; the integers are the same.
With FINE > 0 (Schedule.lut_fine_planes) the top FINE planes also sum residual[idx] (a second
table set, entries in -8..8, the int8 entry's rounding error in units of step / FINE_STEPS) into
their own accumulators, scaled like the plane's lookups and added with s_b / FINE_STEPS.
"""
from __future__ import annotations

import lutc.language as tl
from lutc.jitfunction import jit
from lutc.schedule import FINE_STEPS


@jit
def round_i32(q):
    """Floats with |q| < 2**22 rounded to nearest (ties to even) as int32, exactly: q + 1.5 * 2**23
    holds round(q) in its low mantissa bits, so a bitcast and a subtraction give it (a saturating
    float -> small-int cast is scalarized by LLVM on x86: 16 scalar conversions per table)."""
    return tl.bitcast(q + 12582912.0, tl.int32) - 0x4B400000


@jit
def round_i8(q):
    """Floats with |q| <= 127.5 rounded to nearest as int8 (round_i32, truncated). The table build's
    entries and the dot path's activation quantizer (dotgemm.quantize_x)."""
    return round_i32(q).to(tl.int8)


@jit
def plane_row(b, c, BITS: tl.constexpr, CPG: tl.constexpr, PLANE_MAJOR: tl.constexpr):
    """Which BN-byte row of a weight group's packed block holds plane b of packed byte column c
    (lutc/kernels/packing.py's interleave: plane-major, or byte columns with their planes together)."""
    if PLANE_MAJOR:
        return b * CPG + c
    return c * BITS + b


@jit
def _table_amax(xs, CENTER: tl.constexpr):
    """Largest |entry| of the table over activations xs (zero-padded lanes)."""
    if CENTER:
        return 0.5 * tl.sum(tl.abs(xs))                           # max |subset sum - half sum|
    pos = tl.sum(tl.where(xs > 0.0, xs, 0.0))
    return tl.maximum(pos, pos - tl.sum(xs))                      # max |subset sum|


@jit
def build_tables(x, luts, lut_scales, xsums, K, NG,
                 GS: tl.constexpr, G: tl.constexpr, GA: tl.constexpr, TPG: tl.constexpr,
                 TPGP: tl.constexpr, LUT_DTYPE: tl.constexpr, NB: tl.constexpr, TPB: tl.constexpr,
                 CENTER: tl.constexpr, NS: tl.constexpr, RATIO: tl.constexpr, BUDGET: tl.constexpr,
                 FINE: tl.constexpr):
    """One program per (activation row m, weight group): its TPGP tables, NS scale slots and sum.
    Scale block blk covers tables [blk * TPB, min((blk + 1) * TPB, TPGP)). CENTER: entries are
    subset sums minus half the table's activation sum (sign-symmetric, half the range); lut_gemm
    adds the half back exactly through the zero term. RATIO > 0: block blk's scale is r * unit
    with r = ceil(bmax_blk / (127 * unit)) (so |entry| <= 127) and unit = max(gmax / (127 *
    RATIO), sum_blk bmax_blk / (127 * BUDGET)) (gmax = max bmax): r <= RATIO and sum r <=
    BUDGET + NB, which keeps lut_gemm's int16 group sums in range; slot 0 holds unit, slot
    1 + blk holds r (an exact float); the first pass (block maxima, activation sum) parks each
    block's maximum in slot 1 + blk, so the build pass reads the activations once more, not twice.
    FINE > 0: each table's residual round(FINE_STEPS * v) - FINE_STEPS * round(v) (v = entry / step,
    |residual| <= FINE_STEPS / 2) goes to the second table set, TPGP tables further on."""
    m = tl.program_id(0)
    grp = tl.program_id(1)
    TS: tl.constexpr = 1 << G
    lane = tl.arange(0, GA)
    xrow = x + m * K + grp * GS
    kleft = K - grp * GS          # activations left in this row from the group's start
    TSETS: tl.constexpr = 2 if FINE > 0 else 1
    dst = luts + ((m * NG + grp) * (TSETS * TPGP)) * TS
    slots = lut_scales + (m * NG + grp) * NS
    xsum = 0.0
    gmax = 0.0
    unit = 0.0
    if RATIO > 0:                 # first pass: block maxima (kept in the ratio slots until pass 2) and the sum
        bsum = 0.0
        for blk in range(NB):
            bmax = 0.0
            for t in range(blk * TPB, tl.minimum(blk * TPB + TPB, TPGP)):
                kk = t * G + lane
                xs = tl.load(xrow + kk, mask=(lane < G) & (kk < GS) & (kk < kleft) & (t < TPG))
                xsum += tl.sum(xs)
                bmax = tl.maximum(bmax, _table_amax(xs, CENTER))
            tl.store(slots + 1 + blk, bmax)
            gmax = tl.maximum(gmax, bmax)
            bsum += bmax
        unit = tl.maximum(gmax / (127.0 * RATIO), bsum / (127.0 * BUDGET))
        tl.store(slots, unit)
    for blk in range(NB):
        t0 = blk * TPB
        t1 = tl.minimum(t0 + TPB, TPGP)
        amax = 0.0
        if RATIO > 0:
            amax = tl.load(slots + 1 + blk)
        else:
            for t in range(t0, t1):
                kk = t * G + lane
                xs = tl.load(xrow + kk, mask=(lane < G) & (kk < GS) & (kk < kleft) & (t < TPG))
                xsum += tl.sum(xs)
                amax = tl.maximum(amax, _table_amax(xs, CENTER))
        scale = 1.0
        inv = 1.0
        if LUT_DTYPE == tl.int8:
            if RATIO > 0:
                r = tl.where(unit > 0.0, tl.minimum(tl.maximum(tl.ceil(amax / (127.0 * unit)), 1.0), 1.0 * RATIO), 1.0)
                inv = tl.where(amax > 0.0, 1.0 / (r * unit), 0.0)
                scale = r
            else:
                scale = amax / 127.0
                inv = tl.where(amax > 0.0, 127.0 / amax, 0.0)
        for t in range(t0, t1):
            kk = t * G + lane
            xs = tl.load(xrow + kk, mask=(lane < G) & (kk < GS) & (kk < kleft) & (t < TPG))
            table = tl.lut_build(xs[0:G])
            if CENTER:
                table = table - 0.5 * tl.sum(xs)
            if LUT_DTYPE == tl.int8:
                q = round_i8(table * inv)                 # |table * inv| <= 127
                if FINE > 0:
                    res = round_i32(table * (inv * FINE_STEPS)) - q.to(tl.int32) * FINE_STEPS
                    tl.store(dst + (TPGP + t) * TS + tl.arange(0, TS), res.to(tl.int8))
            else:
                q = table.to(LUT_DTYPE)
            tl.store(dst + t * TS + tl.arange(0, TS), q)
        if RATIO > 0:
            tl.store(slots + 1 + blk, scale)
        else:
            tl.store(slots + blk, scale)
    tl.store(xsums + m * NG + grp, xsum)


@jit
def _chunk(part, w_group, luts_group, c, TABLE_STRIDE,
           BITS: tl.constexpr, G: tl.constexpr, BN: tl.constexpr, PB: tl.constexpr,
           SB: tl.constexpr, CPG: tl.constexpr, MB: tl.constexpr, PLANE_MAJOR: tl.constexpr,
           ACC: tl.constexpr, PAIR: tl.constexpr, mults, FINE: tl.constexpr, TPGP: tl.constexpr):
    """Accumulate the lookups of packed byte-chunk c (PB tables) into part[mi * NP + b]
    (NP = BITS + FINE). PAIR: the lookups of tables s and s + 1 (same rows, same scale block) are
    summed as tl.pair_madd(a, b, mults[mi], mults[mi]) (part then holds rows in pair order).
    A refined plane b >= BITS - FINE also looks its indices up in the residual tables, summed
    the same way into part[mi * NP + b + FINE]."""
    TS: tl.constexpr = 1 << G
    MASK: tl.constexpr = (1 << SB) - 1
    NP: tl.constexpr = BITS + FINE
    tables = [[luts_group for _ in tl.static_range(PB)] for _ in tl.static_range(MB)]
    fines = [[luts_group for _ in tl.static_range(PB)] for _ in tl.static_range(MB)]
    for mi in tl.static_range(MB):
        for s in tl.static_range(PB):
            tp = luts_group + mi * TABLE_STRIDE + (c * PB + s) * TS
            tables[mi][s] = tl.load(tp + tl.arange(0, TS))
            if FINE > 0:
                fines[mi][s] = tl.load(tp + TPGP * TS + tl.arange(0, TS))
    for b in tl.static_range(BITS):
        wp = w_group + plane_row(b, c, BITS, CPG, PLANE_MAJOR) * BN
        packed = tl.load(wp + tl.arange(0, BN))
        if PAIR:
            for s in tl.static_range(0, PB, 2):
                lo = (packed >> (s * SB)) & MASK
                if s + 1 == PB - 1:
                    hi = packed >> ((s + 1) * SB)
                else:
                    hi = (packed >> ((s + 1) * SB)) & MASK
                for mi in tl.static_range(MB):
                    two = tl.pair_madd(tl.lookup(tables[mi][s], lo), tl.lookup(tables[mi][s + 1], hi),
                                       mults[mi], mults[mi])
                    part[mi * NP + b] = _add(part[mi * NP + b], two, ACC)
                    if b >= BITS - FINE:
                        res = tl.pair_madd(tl.lookup(fines[mi][s], lo), tl.lookup(fines[mi][s + 1], hi),
                                           mults[mi], mults[mi])
                        part[mi * NP + b + FINE] = _add(part[mi * NP + b + FINE], res, ACC)
        else:
            for s in tl.static_range(PB):
                if s == PB - 1:
                    idx = packed >> (s * SB)
                else:
                    idx = (packed >> (s * SB)) & MASK
                for mi in tl.static_range(MB):
                    part[mi * NP + b] += tl.lookup(tables[mi][s], idx).to(ACC)
                    if b >= BITS - FINE:
                        part[mi * NP + b + FINE] += tl.lookup(fines[mi][s], idx).to(ACC)
    return part


@jit
def _add(acc, v, ACC: tl.constexpr):
    """acc + an int16 pair sum, widened when the accumulator is wider."""
    if ACC == tl.int16:
        return acc + v
    return acc + v.to(ACC)


@jit
def _block(acc, scales, w_group, luts_group, lut_scales, c0, blk, row, NG, TABLE_STRIDE,
           NCH: tl.constexpr, BITS: tl.constexpr, G: tl.constexpr, BN: tl.constexpr, PB: tl.constexpr,
           SB: tl.constexpr, CPG: tl.constexpr, NS: tl.constexpr, UNROLL: tl.constexpr,
           MB: tl.constexpr, PLANE_MAJOR: tl.constexpr, ACC: tl.constexpr, RATIO: tl.constexpr,
           PAIR: tl.constexpr, FINE: tl.constexpr, TPGP: tl.constexpr):
    """Scale block blk (NCH chunks from c0): integer lookups part_b, then with float block
    scales acc[mi] += _dot(part) * lut_scales[(row + mi * NG) * NS + blk], with integer
    ratios acc[mi * NP + b] += part_b * r (r = lut_scales[(row + mi * NG) * NS + 1 + blk]).
    PAIR with integer ratios: pair_madd multiplies by r itself, so the lookups go straight into
    acc (in pair order); PAIR with float scales: part (pair order, multipliers 1) is put back
    in row order before the float sum."""
    NP: tl.constexpr = BITS + FINE
    if PAIR and RATIO > 0:
        # r is an exact integer float in 1..64
        rs = [round_i32(tl.load(lut_scales + (row + mi * NG) * NS + 1 + blk)).to(tl.uint8)
              for mi in tl.static_range(MB)]
        part = acc
    else:
        rs = [1 for _ in tl.static_range(MB)]
        part = [tl.zeros((BN,), ACC) for _ in tl.static_range(MB * NP)]
    MAIN: tl.constexpr = NCH - NCH % UNROLL
    for cu in range(0, MAIN, UNROLL):
        for u in tl.static_range(UNROLL):
            part = _chunk(part, w_group, luts_group, c0 + cu + u, TABLE_STRIDE,
                          BITS, G, BN, PB, SB, CPG, MB, PLANE_MAJOR, ACC, PAIR, rs, FINE, TPGP)
    for c in tl.static_range(MAIN, NCH):
        part = _chunk(part, w_group, luts_group, c0 + c, TABLE_STRIDE,
                      BITS, G, BN, PB, SB, CPG, MB, PLANE_MAJOR, ACC, PAIR, rs, FINE, TPGP)
    if PAIR and RATIO > 0:
        return part
    for mi in tl.static_range(MB):
        if RATIO > 0:
            r = tl.load(lut_scales + (row + mi * NG) * NS + 1 + blk).to(ACC)
            for b in tl.static_range(NP):
                acc[mi * NP + b] += part[mi * NP + b] * r
        else:
            acc[mi] += _dot(part, scales, mi, BITS, FINE, PAIR) * tl.load(lut_scales + (row + mi * NG) * NS + blk)
    return acc


@jit
def _dot(part, scales, mi: tl.constexpr, BITS: tl.constexpr, FINE: tl.constexpr, PAIR: tl.constexpr):
    """Row mi's float sum over planes of its lookup sums times the plane scales: sum_b part_b * s_b,
    plus each refined plane's residual sum times s_b / FINE_STEPS."""
    NP: tl.constexpr = BITS + FINE
    dot = _natural(part[mi * NP], PAIR).to(tl.float32) * scales[0]
    for b in tl.static_range(1, BITS):
        dot += _natural(part[mi * NP + b], PAIR).to(tl.float32) * scales[b]
    for j in tl.static_range(FINE):
        dot += _natural(part[mi * NP + BITS + j], PAIR).to(tl.float32) * (scales[BITS - FINE + j] * (1.0 / FINE_STEPS))
    return dot


@jit
def _natural(v, PAIR: tl.constexpr):
    """v in row order: sums of tl.pair_madd results are put back by tl.pair_order."""
    if PAIR:
        return tl.pair_order(v)
    return v


@jit
def _rows(w_tile, sz_tile, luts, lut_scales, xsums, y, m0, N, NG, rows,
          BITS: tl.constexpr, G: tl.constexpr, BN: tl.constexpr, PB: tl.constexpr,
          SB: tl.constexpr, CPG: tl.constexpr, TPGP: tl.constexpr, UNROLL: tl.constexpr,
          MB: tl.constexpr, PLANE_MAJOR: tl.constexpr, ACC: tl.constexpr, NB: tl.constexpr,
          CPB: tl.constexpr, NBF: tl.constexpr, TAILC: tl.constexpr, CENTER: tl.constexpr,
          NS: tl.constexpr, RATIO: tl.constexpr, PAIR: tl.constexpr, PF: tl.constexpr, FINE: tl.constexpr):
    """MB activation rows (m0 ..) against one weight tile of BN rows. PF > 0: each group first
    prefetches the packed weights and scales of group grp + PF, which past the tile's last group
    are the next tile's first (tiles are contiguous; prefetches never fault past the buffer)."""
    TS: tl.constexpr = 1 << G
    TSETS: tl.constexpr = 2 if FINE > 0 else 1
    TABLE_STRIDE = NG * TSETS * TPGP * TS   # elements between consecutive m's tables
    acc = [tl.zeros((BN,), tl.float32) for _ in tl.static_range(MB)]
    WG: tl.constexpr = CPG * BITS * BN      # packed bytes per tile and group
    SZG: tl.constexpr = (BITS + 1) * BN     # float16 scales and zeros per tile and group
    for grp in range(NG):
        if PF > 0:
            for i in tl.static_range(0, WG, 64):
                tl.prefetch(w_tile + (grp + PF) * WG + i, 3)
            for i in tl.static_range(0, SZG, 32):
                tl.prefetch(sz_tile + (grp + PF) * SZG + i, 3)
        w_group = w_tile + grp * WG
        luts_group = luts + (m0 * NG + grp) * (TSETS * TPGP * TS)
        sz = sz_tile + grp * SZG
        scales = [tl.load(sz + b * BN + tl.arange(0, BN)).to(tl.float32) for b in tl.static_range(BITS)]
        row = m0 * NG + grp                 # (row + mi * NG) indexes lut_scales / NS and xsums
        if RATIO > 0:                       # integer block ratios: one int16 sum per plane and group
            iacc = [tl.zeros((BN,), ACC) for _ in tl.static_range(MB * (BITS + FINE))]
            for blk in range(NBF):
                iacc = _block(iacc, scales, w_group, luts_group, lut_scales, blk * CPB, blk, row, NG, TABLE_STRIDE,
                              CPB, BITS, G, BN, PB, SB, CPG, NS, UNROLL, MB, PLANE_MAJOR, ACC, RATIO, PAIR, FINE, TPGP)
            if TAILC > 0:
                iacc = _block(iacc, scales, w_group, luts_group, lut_scales, NBF * CPB, NBF, row, NG,
                              TABLE_STRIDE, TAILC, BITS, G, BN, PB, SB, CPG, NS, UNROLL, MB, PLANE_MAJOR, ACC, RATIO, PAIR, FINE, TPGP)
            for mi in tl.static_range(MB):
                acc[mi] += _dot(iacc, scales, mi, BITS, FINE, PAIR) * tl.load(lut_scales + (row + mi * NG) * NS)
        else:
            for blk in range(NBF):
                acc = _block(acc, scales, w_group, luts_group, lut_scales, blk * CPB, blk, row, NG, TABLE_STRIDE,
                             CPB, BITS, G, BN, PB, SB, CPG, NS, UNROLL, MB, PLANE_MAJOR, ACC, RATIO, PAIR, FINE, TPGP)
            if TAILC > 0:
                acc = _block(acc, scales, w_group, luts_group, lut_scales, NBF * CPB, NBF, row, NG,
                             TABLE_STRIDE, TAILC, BITS, G, BN, PB, SB, CPG, NS, UNROLL, MB, PLANE_MAJOR, ACC, RATIO, PAIR, FINE, TPGP)
        zero = tl.load(sz + BITS * BN + tl.arange(0, BN)).to(tl.float32)
        if CENTER:                          # centered tables dropped xsum / 2 from every plane
            for b in tl.static_range(BITS):
                zero += 0.5 * scales[b]
        for mi in tl.static_range(MB):
            acc[mi] += zero * tl.load(xsums + row + mi * NG)
    for mi in tl.static_range(MB):
        tl.store(y + (m0 + mi) * N + rows, acc[mi], mask=rows < N)


@jit
def lut_gemm(w, sz, luts, lut_scales, xsums, y, M, N, NG,
             BITS: tl.constexpr, G: tl.constexpr, BN: tl.constexpr, PB: tl.constexpr,
             SB: tl.constexpr, CPG: tl.constexpr, TPGP: tl.constexpr, UNROLL: tl.constexpr,
             MB: tl.constexpr, PLANE_MAJOR: tl.constexpr, ACC: tl.constexpr, NB: tl.constexpr,
             CPB: tl.constexpr, NBF: tl.constexpr, TAILC: tl.constexpr, CENTER: tl.constexpr,
             NS: tl.constexpr, RATIO: tl.constexpr, PAIR: tl.constexpr, PF: tl.constexpr, FINE: tl.constexpr):
    """One program per tile of BN weight rows: y[:, tile] for every activation row: MB rows per
    pass, then (MB = 4) a pass of 2 over a remainder of 2-3 rows, then the last rows one by one."""
    tile = tl.program_id(0)
    rows = tile * BN + tl.arange(0, BN)
    w_tile = w + tile * (NG * CPG * BITS * BN)
    sz_tile = sz + tile * (NG * (BITS + 1) * BN)
    MMAIN = M - M % MB
    for m0 in range(0, MMAIN, MB):
        _rows(w_tile, sz_tile, luts, lut_scales, xsums, y, m0, N, NG, rows,
              BITS, G, BN, PB, SB, CPG, TPGP, UNROLL, MB, PLANE_MAJOR, ACC, NB, CPB, NBF, TAILC, CENTER, NS, RATIO, PAIR, PF, FINE)
    if MB > 2:
        M2 = M - M % 2
        for m0 in range(MMAIN, M2, 2):
            _rows(w_tile, sz_tile, luts, lut_scales, xsums, y, m0, N, NG, rows,
                  BITS, G, BN, PB, SB, CPG, TPGP, UNROLL, 2, PLANE_MAJOR, ACC, NB, CPB, NBF, TAILC, CENTER, NS, RATIO, PAIR, PF, FINE)
        MMAIN = M2
    if MB > 1:
        for m0 in range(MMAIN, M):
            _rows(w_tile, sz_tile, luts, lut_scales, xsums, y, m0, N, NG, rows,
                  BITS, G, BN, PB, SB, CPG, TPGP, UNROLL, 1, PLANE_MAJOR, ACC, NB, CPB, NBF, TAILC, CENTER, NS, RATIO, PAIR, PF, FINE)
