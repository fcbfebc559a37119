"""High-level op: `linear(x, qw)` = x @ W_hat^T, with the schedule chosen per problem, compiled
once per process (the one CompiledKernel cache) and run."""
from __future__ import annotations

import math
import threading

from . import plugins
from .kernels.compiled import CompiledKernel
from .schedule import KNOB_CHOICES, Schedule

_KERNELS: dict = {}
_LOCK = threading.Lock()


BATCH_M = 8   # up to this many rows are a decode batch (one row per sequence), more a prefill
DOT_MIN_M = 16     # untuned default: from this many rows on, the int8 dot path (bench/bench_prefill_gemm.py)


def default_mb(M: int) -> int:
    """Activation rows per weight-tile pass for M (an M bucket: schedules are chosen per bucket,
    lutc.schedule.m_bucket): 4 for decode batches of buckets 4 and 8 (the weight tile and its
    unpacked indices are shared by 4 rows' lookups; lut_gemm runs a leftover of 2-3 rows as a
    pass of 2, then one row), 2 for bucket 2 and for prefill on the LUT path (measured:
    docs/serving.md), 1 for one row."""
    if M < 2:
        return 1
    return 4 if 4 <= M <= BATCH_M else 2


def dot_preferred(bits: int, M: int, s: Schedule, insns: int = 1) -> bool:
    """The untuned LUT-vs-dot rule, from operation counts (bench/bench_prefill_gemm.py measures it):
    the LUT path does one table lookup per weight bit-plane, the dot path 1 + act_residual int8
    dots per weight of `insns` instructions each (1: vpdpbusd, sdot; 2: vpmaddubsw + vpmaddwd on
    AVX2). More planes than dot instructions -> dot, fewer -> LUT. Ties -> dot from 32 rows, by
    measurement: W4 on AVX2 (two-instruction dots; 1.0-1.7x the LUT prefill) and, since the dot
    GEMM reads activation groups as broadcast memory operands, W2 with the residual on VNNI
    (GEMM 1.2-2.2x the LUT path at M = 128 and 512; docs/runtime.md, "third pass") and on AVX2's
    int16 form (dotgemm.act_i16, one vpmaddwd per 2 weights carrying the residual: Zen 3, 1 thread,
    CPU time, GEMM lut/dot 0.93-1.44x, above 1 in 11 of 12 SmolLM2/7B shapes at M = 128 and 512;
    docs/runtime.md, "Zen 3 (AVX2) prefill")."""
    cost = (1 + bool(s.act_residual)) * insns
    return bits > cost or (bits == cost and M >= 32)


def default_layout(target="host") -> dict:
    """The untuned packed tile height (bn) and lookup form (lut_pair) of a target, by measurement
    (docs/runtime.md, "Pair-sum lookups"): pair-sum lookups on x86 targets with pshufb, in 64-row
    tiles where vectors are 512 bits (AVX-512: the pairs run in zmm; batched M=4 GEMMs 1.16-1.35x,
    M=1 1.00-1.09x, SmolLM2 W4 decode 1.07-1.12x the former 32-row single lookups, W2 decode
    within noise) and in 32-row tiles at <= 256 bits
    (AVX2: 1.32-1.46x at M=4, 0.93-1.17x at M=1; natively on a Zen 3, M=1: 64-row tiles 0.70-0.93x and
    single lookups 0.74-0.89x this, docs/runtime.md "Zen 3 (AVX2) decode"); elsewhere single lookups in 32-row tiles. Every M
    bucket of a matrix shares bucket 1's layout (runtime.linear.bucket_schedules), and the runtime's
    pack cache is keyed by this layout (runtime.packcache.cache_path)."""
    from .backend.target import get_target
    t = get_target(target)
    if t.is_x86 and t.byte_shuffle == "pshufb":
        return dict(bn=64 if t.vector_bits > 256 else 32, lut_pair=True)
    return dict(bn=32, lut_pair=False)


def default_unroll(s: Schedule, target="host") -> int | None:
    """The untuned unroll of s (None: the Schedule's own, at most 4 and one scale block's
    chunks). 1 for 4-bit weights in 4-row passes (mb 4: buckets 4 and 8) over 256-bit pair-sum
    tiles (AVX2's default_layout): by measurement on Zen 3, the LUT GEMM alone at M = 4 took
    0.77-0.79x the unroll-4 time on SmolLM2's five shapes and the 7B-shape W4 lm_head (unroll 2:
    1.17-1.31x), 0.93x at M = 8; at M = 2 (mb 2) 1.06-1.13x, at W2 and W3 1.04-1.07x, so those
    keep theirs (docs/serving.md, "Measured on AVX2")."""
    from .backend.target import get_target
    t = get_target(target)
    if s.bits == 4 and s.mb == 4 and s.paired and t.is_x86 and t.vector_bits <= 256:
        return 1
    return None


def default_schedule(bits: int, group_size: int, M: int = 1, target="host") -> Schedule:
    """The untuned default: int8 tables of g=4, the target's default_layout (tile rows, pair-sum
    lookups), the Schedule's default table scales and unroll (at most one scale block's chunks;
    default_unroll for AVX2's 4-row W4 passes);
    M-blocking per default_mb(M); prefetch per default_prefetch; the dot path from DOT_MIN_M rows
    where its layout allows, the target has a group-dot instruction (`dotgemm.dot_insns`: VNNI,
    AArch64 dotprod, AVX2's vpmaddubsw) and `dot_preferred` says so (lutc.ops.default_dot's
    blocking, with the activation residual)."""
    from .kernels.dotgemm import dot_insns
    s = Schedule(bits=bits, group_size=group_size, mb=default_mb(M), **default_layout(target))
    s = s.replace(prefetch=default_prefetch(s), unroll=default_unroll(s, target))
    if M >= DOT_MIN_M and group_size % 32 == 0:
        insns = dot_insns(target)
        if insns is not None and dot_preferred(bits, M, s.replace(act_residual=True), insns):
            s = default_dot(s, M, target)
    return s


PREFETCH_BYTES = 2048     # how far ahead lut_gemm prefetches a tile's packed weights by default (W1-W2)


def default_prefetch(s: Schedule) -> int:
    """The untuned software-prefetch distance, in weight groups: about PREFETCH_BYTES of a tile's
    packed weights ahead at W1-W2 (measured best in 32-row tiles: 4 groups at W2 g64, 2 at g128; W2
    7B-shape decode 1.08-1.09x at 1 thread; 64-row tiles hold twice the bytes per group, so half the
    groups), none at W3-W4 (it never helped there; on 64-row W4 tiles 1-4 groups ahead cost 20-26%
    of 7B-shape decode, docs/runtime.md "Pair-sum lookups"; on a Zen 3, W2 1 or 4 groups instead of 2:
    0.95-1.02x, "Zen 3 (AVX2) decode"). Rounded to the knob's choices."""
    if s.bits > 2:
        return 0
    ahead = PREFETCH_BYTES / (s.bn * s.group_size * s.bits / 8)
    choices = [c for c in KNOB_CHOICES["prefetch"] if c > 0]
    return min(choices, key=lambda c: abs(math.log2(c / ahead)))


def default_dot(s: Schedule, M: int, target="host") -> Schedule:
    """s on the dot path with the default blocking for `target` (any M) and the activation
    residual. 512-bit x86: dot_bm 8 activation rows x dot_ns 16 weight rows (16 zmm int32
    accumulators with the residual plus one slice's 8 level vectors; the fastest of 4/8/16 x 16/32
    at M = 128). Narrower vectors: 32 x 8 (the fastest of 8-64 x 4-16 for the x86-avx2 code at
    M = 128; AArch64 takes it too, unmeasured there), except AVX2 without VNNI, whose int16 form
    (`dotgemm.act_i16`) runs 32 x 16 (1.4-1.5x its 32 x 8, native Zen 3, docs/runtime.md "Zen 3
    (AVX2) prefill"). docs/runtime.md, "third pass"."""
    from .backend.target import get_target
    from .kernels.dotgemm import act_i16
    bm, ns = (8, 16) if get_target(target).vector_bits >= 512 else (32, 16) if act_i16(target) else (32, 8)
    return s.replace(path="dot", dot_bm=bm, dot_ns=ns, act_residual=True, lut_pair=False, prefetch=0)


def choose_schedule(bits: int, group_size: int, M: int, N: int, K: int, target="host") -> Schedule:
    """The schedule for this problem: the first schedule source (plugins.SCHEDULE_SOURCES, e.g.
    the tuning db of this device) that has one, else the default."""
    for source in plugins.load(plugins.SCHEDULE_SOURCES):
        found = source("lut_gemm", bits, group_size, M, N, K, target)
        if found is not None:
            return found
    return default_schedule(bits, group_size, M, target)


def get_kernel(schedule: Schedule, target="host") -> CompiledKernel:
    """The CompiledKernel for `schedule`, built once per process (objects are also cached on disk)."""
    key = (schedule.codegen_key, str(target))
    k = _KERNELS.get(key)
    if k is None:
        with _LOCK:
            k = _KERNELS.get(key)
            if k is None:
                k = _KERNELS[key] = CompiledKernel(schedule, target)
    return k


def linear(x, qw, threads=None, out=None):
    """y = x @ qw.dequantize().T by LUT GEMM; x is (M, K) or (K,) float32 (numpy or torch)."""
    for attr in ("bits", "group_size", "N", "K"):
        if not hasattr(qw, attr):
            raise TypeError(f"qw: expected a quant.QuantizedTensor, got {type(qw).__name__}")
    shape = getattr(x, "shape", None)
    M = 1 if shape is None or len(shape) < 2 else int(shape[0])
    sched = choose_schedule(qw.bits, qw.group_size, M, qw.N, qw.K)
    return get_kernel(sched)(x, qw, out=out, threads=threads if threads is not None else sched.threads)
