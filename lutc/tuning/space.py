"""The search space: every Schedule knob as an Optuna parameter, with constraints checked before compiling."""
from __future__ import annotations

import dataclasses

from ..schedule import (ACT_BLOCKS, DOT_KNOB_CHOICES, KNOB_CHOICES, LUT_SCALE_BLOCKS,
                        LUT_SCALE_RATIOS, Schedule, default_table_scales)

PARAMS = ("g", "lut_dtype", "lut_scale_block", "lut_centered", "lut_scale_ratio", "lut_pair", "lut_fine_planes",
          "prefetch", "bn", "unroll",
          "mb", "interleave", "threads", "path", "dot_bm", "dot_ns", "act_block", "act_residual")
LUT_ONLY = ("lut_dtype", "lut_scale_block", "lut_centered", "lut_scale_ratio", "lut_pair", "lut_fine_planes", "prefetch",
            "unroll", "mb")  # the dot path ignores
DOT_ONLY = ("dot_bm", "dot_ns", "act_block", "act_residual")                                    # the LUT path ignores


@dataclasses.dataclass(frozen=True)
class Problem:
    """One tuning problem: y (M, N) = x (M, K) @ W_hat (N, K)^T with `bits`-bit weights."""

    bits: int
    group_size: int
    M: int
    N: int
    K: int
    kernel: str = "lut_gemm"

    @property
    def label(self) -> str:
        return f"W{self.bits} g{self.group_size} M={self.M} {self.N}x{self.K}"


def thread_choices(cores: int) -> tuple:
    """1, powers of two below `cores`, and `cores` itself."""
    out, t = {1, cores}, 2
    while t < cores:
        out.add(t)
        t *= 2
    return tuple(sorted(out))


def space_for(p: Problem, cores: int) -> dict:
    """Choices per knob for this problem. Knobs that cannot help are cut here, so they are
    never sampled: mb above M (the extra rows never exist) and bn above N (pure padding)."""
    space = {name: tuple(KNOB_CHOICES[name]) for name in PARAMS if name in KNOB_CHOICES}
    space["mb"] = tuple(v for v in KNOB_CHOICES["mb"] if v <= max(1, p.M))
    smallest = min(KNOB_CHOICES["bn"])
    space["bn"] = tuple(v for v in KNOB_CHOICES["bn"] if v <= max(smallest, p.N))
    space["lut_scale_block"] = tuple(b for b in LUT_SCALE_BLOCKS if b < p.group_size) + (p.group_size,)
    space["lut_centered"] = (True, False)
    space["lut_scale_ratio"] = LUT_SCALE_RATIOS
    space["lut_pair"] = (True, False)
    space["lut_fine_planes"] = tuple(range(min(2, p.bits) + 1))    # 0, 1, 2: the top planes carry the error
    space["threads"] = thread_choices(cores)
    space["path"] = DOT_KNOB_CHOICES["path"] if p.group_size % 32 == 0 else ("lut",)
    space["dot_bm"] = tuple(v for v in DOT_KNOB_CHOICES["dot_bm"] if v <= max(8, p.M))   # 8: the default
    space["dot_ns"] = DOT_KNOB_CHOICES["dot_ns"]
    whole = (p.group_size,) if p.group_size > 128 else (128,)   # one scale per group; 128 is the default
    space["act_block"] = tuple(b for b in ACT_BLOCKS if b < min(p.group_size, 128) and p.group_size % b == 0) + whole
    space["act_residual"] = (True, False)
    if "dot" not in space["path"]:          # one value each: the LUT path ignores them
        space.update({k: space[k][:1] for k in DOT_ONLY})
    return space


def tiles(s: Schedule, p: Problem) -> int:
    """Tiles of s.bn weight rows the problem's N rows make (at most one thread each)."""
    return -(-p.N // s.bn)


def invalid_reason(s: Schedule, p: Problem) -> str | None:
    """Why a combination of knobs is pointless for this problem (pruned before compiling), or None.
    (A schedule whose tables are too imprecise is not pruned here: the accuracy gate fails it.)"""
    n_tiles = tiles(s, p)
    if s.threads is not None and s.threads > n_tiles:
        return f"threads={s.threads} exceeds the {n_tiles} tiles of bn={s.bn} rows (N={p.N}): threads would idle"
    if s.path == "dot":
        return s.dot_problem() or None
    if s.unroll > s.scale_chunks:
        return (f"unroll={s.unroll} exceeds the {s.scale_chunks} table chunks of a scale block "
                f"(g={s.g}, group_size={s.group_size}, lut_scale_block={s.lut_scale_block}): the "
                f"unrolled loop would never run")
    if s.lut_dtype != "int8" and (s.lut_scale_block < s.group_size or not s.lut_centered):
        return f"lut_scale_block and lut_centered only change int8 tables ({s.lut_dtype} tables: a duplicate)"
    if s.lut_dtype != "int8" and s.lut_pair != Schedule.lut_pair:
        return f"lut_pair only changes int8 tables ({s.lut_dtype} tables: a duplicate)"
    if s.lut_fine_planes != default_table_scales(s.bits, s.lut_pair)[2] and not s.fine_planes:
        return f"lut_fine_planes={s.lut_fine_planes} only refines int8 tables ({s.lut_dtype} tables: a duplicate)"
    default_ratio = default_table_scales(s.bits, s.lut_pair)[1]
    if s.lut_scale_ratio != default_ratio and s.replace(lut_scale_ratio=1).scale_ratio == 0:
        return (f"lut_scale_ratio={s.lut_scale_ratio} has no effect here (float tables, one scale block, or a "
                f"group too long for int16 ratios): a duplicate of the default {default_ratio}")
    return None


def schedule_from_params(p: Problem, params: dict) -> Schedule:
    """The Schedule of these parameters, canonical: the knobs its path does not read (DOT_ONLY on
    the LUT path, LUT_ONLY on the dot path) take the Schedule's defaults, so draws that differ only
    there are one schedule (measured once per trial, never a pruned trial). ValueError if no
    Schedule allows the combination (e.g. the dot path with g=3): the search records that trial as
    invalid."""
    base = Schedule(bits=p.bits, group_size=p.group_size, kernel=p.kernel)
    ignored = DOT_ONLY if params.get("path", base.path) == "lut" else LUT_ONLY
    knobs = {k: (getattr(base, k) if k in ignored else params[k]) for k in PARAMS if k in params}
    return Schedule(bits=p.bits, group_size=p.group_size, kernel=p.kernel, **knobs)


def params_of(s: Schedule, cores: int, p: Problem | None = None) -> dict:
    """The Optuna parameters of a schedule (threads=None means all cores; with the problem p, at
    most one per tile, as the launch uses them: invalid_reason prunes more threads than tiles)."""
    d = {k: getattr(s, k) for k in PARAMS}
    if d["threads"] is None:
        d["threads"] = cores if p is None else max(1, min(cores, tiles(s, p)))
    return d


def in_space(params: dict, space: dict) -> bool:
    return all(params.get(k) in space[k] for k in PARAMS)


def suggest(trial, space: dict) -> dict:
    return {name: trial.suggest_categorical(name, list(space[name])) for name in PARAMS}


def describe(s: Schedule) -> str:
    """A compact one-line knob summary: 'g4 int8/32cr8p bn64 u4 mb1 pf1 chunk t2' (int8: activations per
    table scale, c = centered, rR = integer block ratios up to R, p = pair-sum lookups, fF = the top F
    bit-planes refined by residual tables; pfD = prefetch
    D groups ahead, left out when off); on the dot path
    'dot g4 bn32 bm64 ns4 xb128 chunk t2'."""
    t = "*" if s.threads is None else s.threads
    if s.path == "dot":
        res = "+r" if s.act_residual else ""
        return f"dot g{s.g} bn{s.bn} bm{s.dot_bm} ns{s.dot_ns} xb{s.act_scale_block}{res} {s.interleave} t{t}"
    tab = s.lut_dtype
    if s.lut_dtype == "int8":
        blk = s.scale_chunks * s.g * s.per_byte if s.scale_blocks > 1 else s.group_size
        tab += f"/{blk}{'c' if s.centered else ''}{f'r{s.scale_ratio}' if s.scale_ratio else ''}{'p' if s.paired else ''}"
        tab += f"f{s.fine_planes}" if s.fine_planes else ""
    pf = f" pf{s.prefetch}" if s.prefetch else ""
    return f"g{s.g} {tab} bn{s.bn} u{s.unroll} mb{s.mb}{pf} {s.interleave} t{t}"
