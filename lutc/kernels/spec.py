"""The LUT-GEMM kernel ABI, stated once.

A call y = x @ W_hat^T is two launches. On the schedule's "lut" path, the kernels in gemm.py:

    build_tables  grid (M, NG)       x, luts, lut_scales, xsums, K, NG
    lut_gemm      grid (num_tiles,)  w, sz, luts, lut_scales, xsums, y, M, N, NG

on the "dot" path, those in dotgemm.py, with the same parameters and grids (the scratch holds
int8 activations, their scales and group sums instead of tables):

    quantize_x    grid (M, NG)       x, luts (= xq), lut_scales (= xs), xsums, K, NG
    dot_gemm      grid (num_tiles,)  w, sz, luts, lut_scales, xsums, y, M, N, NG

Parameter order is the kernels' own definition; this module gives their types
(`signatures`), the constexpr values a Schedule sets (`constexprs`, legend below), the scratch
buffers between the two launches (`scratch_sizes`) and the 32-bit offset limit. Everything
else (CompiledKernel, the runtime, the remote runner, the tuner) goes through here and
CompiledKernel.prepare.
"""
from __future__ import annotations

import dataclasses

from ..ir import types as T

# What every constexpr of the two kernels means (s = the Schedule):
CONSTEXPR_LEGEND = {
    "GS": "s.group_size: activations per weight group (one zero and BITS scales per row and group)",
    "G": "s.g: activations per table; a table has TS = 2**G entries",
    "GA": "G rounded up to a power of two: lanes of the table-building block",
    "TPG": "tables per group = ceil(GS / G) (s.tables_per_group)",
    "TPGP": "TPG padded to whole packed bytes = CPG * PB (s.padded_tables)",
    "PB": "table indices per packed weight byte (s.per_byte: 4 for g=2, else 2)",
    "SB": "bits per table index in a packed byte (s.slot_bits: 8 // PB)",
    "CPG": "packed bytes per row, bit-plane and group (s.chunks_per_group)",
    "BITS": "s.bits: bit-planes per weight",
    "BN": "s.bn: weight rows per tile (one program of lut_gemm)",
    "UNROLL": "s.unroll: packed bytes per step of the table loop",
    "MB": "s.mb: activation rows sharing one pass over a weight tile",
    "PLANE_MAJOR": "s.interleave == 'plane': bit-plane-major packed order",
    "ACC": "accumulator of one scale block's lookups (s.acc_dtype)",
    "NB": "table scale blocks per (row, group) = ceil(CPG / CPB) (s.scale_blocks)",
    "NS": "floats per (row, group) in lut_scales, which is [M][NG][NS] (s.scale_slots): NB block "
          "scales, or with RATIO > 0 the unit step then NB integer multipliers",
    "RATIO": "largest integer block-scale multiplier (s.scale_ratio; 0: float block scales)",
    "BUDGET": "s.ratio_budget: the multipliers of a group sum to <= BUDGET + NB (int16 range)",
    "TPB": "tables sharing one int8 table scale = CPB * PB",
    "CPB": "packed chunks sharing one table scale (s.scale_chunks; CPG for float tables)",
    "NBF": "scale blocks of a group with all CPB chunks = CPG // CPB",
    "CENTER": "int8 tables centered (s.centered): entries minus half the table's activation sum",
    "TAILC": "chunks of the last, partial scale block = CPG % CPB (0: none)",
    "LUT_DTYPE": "table element type (s.lut_dtype)",
    "PAIR": "s.paired: the two lookups of a packed byte are summed by tl.pair_madd (int16, pair "
            "order, times the block's integer ratio or 1) instead of widened one by one",
    "FINE": "s.fine_planes: the top FINE bit-planes also look up the residual tables (entries in units of "
            "step / FINE_STEPS) into their own accumulators, added with s_b / FINE_STEPS; the luts scratch then "
            "holds 2 sets of TPGP tables per (row, group)",
    "PF": "s.prefetch: lut_gemm prefetches the weights and scales of the group PF groups ahead (0: off)",
    "BM": "dot path: s.dot_bm, activation rows per output block (and per block of the xq layout)",
    "BNS": "dot path: s.dot_ns, weight rows per output block",
    "XB": "dot path: activations per int8 activation scale (s.act_scale_block)",
    "RES": "dot path: s.act_residual, a second int8 dot on the activations' rounding residual",
    "WMAX": "dot path: largest weight level, 255 (u8 x s8 dot instructions, or A16) or 127 (AVX2 vpmaddubsw)",
    "A16": "dot path: s.act_residual on a target where dotgemm.act_i16 holds (AVX2 without VNNI): the "
           "activation and its residual as one int16 254 xq + xq2, dotted with int16 levels (vpmaddwd)",
    "KH": "dot path, A16: columns per tl.dot (KH16)",
}
LUT_TYPES = {"int8": T.int8, "float16": T.float16, "float32": T.float32}
ACC_TYPES = {"int16": T.int16, "int32": T.int32, "float32": T.float32}
TABLES_GRID_RANK, GEMM_GRID_RANK = 2, 1
MAX_OFFSET = 2**31 - 1     # generated code indexes with i32 arithmetic


def scratch_type(s):
    """Element type of the `luts` scratch: the table type, or int8 activations on the dot path."""
    return T.int8 if s.path == "dot" else LUT_TYPES[s.lut_dtype]


def signatures(s) -> tuple[dict, dict]:
    """(tables, gemm) parameter types for schedule s (either path)."""
    lut, f32p, i32 = T.PointerType(scratch_type(s)), T.PointerType(T.float32), T.int32
    tables = dict(x=f32p, luts=lut, lut_scales=f32p, xsums=f32p, K=i32, NG=i32)
    gemm = dict(w=T.PointerType(T.uint8), sz=T.PointerType(T.float16), luts=lut, lut_scales=f32p,
                xsums=f32p, y=f32p, M=i32, N=i32, NG=i32)
    return tables, gemm


KH16 = 8   # A16: columns per tl.dot; its (KH, dot_ns) int16 levels (8 ymm at 16 rows) stay in registers


def constexprs(s, target="host") -> tuple[dict, dict]:
    """(tables, gemm) constexpr values for schedule s on `target` (see CONSTEXPR_LEGEND)."""
    if s.path == "dot":
        from .dotgemm import act_i16, level_max
        xb = s.act_scale_block
        a16 = bool(s.act_residual) and act_i16(target)
        return (dict(GS=s.group_size, BM=s.dot_bm, XB=xb, RES=s.act_residual, A16=a16),
                dict(BITS=s.bits, BN=s.bn, CPG=s.chunks_per_group, PLANE_MAJOR=s.interleave == "plane",
                     GS=s.group_size, BM=s.dot_bm, BNS=s.dot_ns, XB=xb, WMAX=level_max(target, s.act_residual),
                     RES=s.act_residual, A16=a16, KH=KH16))
    ga = 1 << (s.g - 1).bit_length()
    tables = dict(GS=s.group_size, G=s.g, GA=ga, TPG=s.tables_per_group, TPGP=s.padded_tables,
                  LUT_DTYPE=LUT_TYPES[s.lut_dtype], NB=s.scale_blocks, TPB=s.scale_chunks * s.per_byte,
                  CENTER=s.centered, NS=s.scale_slots, RATIO=s.scale_ratio, BUDGET=s.ratio_budget,
                  FINE=s.fine_planes)
    gemm = dict(BITS=s.bits, G=s.g, BN=s.bn, PB=s.per_byte, SB=s.slot_bits, CPG=s.chunks_per_group,
                TPGP=s.padded_tables, UNROLL=s.unroll, MB=s.mb, PLANE_MAJOR=s.interleave == "plane",
                ACC=ACC_TYPES[s.acc_dtype], NB=s.scale_blocks, CPB=s.scale_chunks,
                NBF=s.chunks_per_group // s.scale_chunks, TAILC=s.chunks_per_group % s.scale_chunks,
                CENTER=s.centered, NS=s.scale_slots, RATIO=s.scale_ratio, PAIR=s.paired, PF=s.prefetch,
                FINE=s.fine_planes)
    return tables, gemm


def gemm_target(s, target="host"):
    """The target lut_gemm is compiled for: `target`, except that paired kernels (s.paired) of
    32-row tiles on a 512-bit x86 target are held to 256-bit registers: their lookups are ymm
    anyway, and in ymm the pair form's byte shuffles (vpshufb, vpunpck[lh]bw) issue on two ports
    (p1, p5), while any 512-bit op in flight turns p1's vector units off (docs/runtime.md,
    "Pair-sum lookups"). Tiles of 64+ rows pair in zmm."""
    from ..backend.target import get_target
    t = get_target(target)
    if s.path == "lut" and s.paired and s.bn <= 32 and t.is_x86 and t.vector_bits > 256:
        return dataclasses.replace(t, vector_bits=256)
    return target


def scratch_sizes(s, M: int, NG: int) -> dict:
    """Elements of each scratch buffer written by the tables launch and read by the gemm launch
    (dot path: rows padded to whole blocks of dot_bm)."""
    if s.path == "dot":
        mp = -(-M // s.dot_bm) * s.dot_bm
        return dict(luts=mp * NG * s.group_size * (1 + s.act_residual), lut_scales=mp * NG * (s.group_size // s.act_scale_block),
                    xsums=mp * NG)
    return dict(luts=M * NG * s.table_sets * s.padded_tables * s.table_size, lut_scales=M * NG * s.scale_slots,
                xsums=M * NG)


def max_rows(s, N: int, K: int, NG: int) -> int:
    """The most activation rows one call can take within the 32-bit offsets (callers split M)."""
    per_row = max(scratch_sizes(s, 1, NG)["luts"], N, K)
    return max(1, MAX_OFFSET // per_row)


def offset_problem(s, M: int, N: int, K: int, NG: int, num_tiles: int) -> str | None:
    """Why a call of this size would overflow the kernels' 32-bit element offsets, or None."""
    sizes = {"tables or int8 activations": scratch_sizes(s, M, NG)["luts"], "output (M*N)": M * N,
             "activations (M*K)": M * K,
             "packed weights": num_tiles * NG * s.chunks_per_group * s.bits * s.bn,
             "scales (tiles*NG*(bits+1)*bn)": num_tiles * NG * (s.bits + 1) * s.bn}
    for what, n in sizes.items():
        if n > MAX_OFFSET:
            return f"{what} has {n} elements, more than the kernels' 32-bit offsets reach ({MAX_OFFSET})"
    return None
