"""A static cost model of LUT-GEMM schedules per target: ranks candidates without running them (never a measurement)."""
from __future__ import annotations

import dataclasses
import math

MODEL = "lutc.remote.estimate/1"


@dataclasses.dataclass(frozen=True)
class DeviceModel:
    """Assumed machine figures (public spec-sheet level, not measured): clock, vector issue,
    byte-shuffle issue per cycle, memory bandwidth for one thread and for all, cores, L2 bytes."""

    ghz: float
    vec_issue: float
    shuffle_issue: float
    bw_thread_gbs: float
    bw_max_gbs: float
    cores: int
    l2_bytes: int
    registers: int


_DEVICES = {  # by LLVM cpu name; anything else falls back per architecture
    "apple-m2": DeviceModel(3.5, 4, 4, 60, 100, 8, 4 << 20, 32),
    "cortex-a76": DeviceModel(2.4, 2, 2, 8, 12, 4, 512 << 10, 32),       # Raspberry Pi 5 class
    "haswell": DeviceModel(3.0, 3, 1, 12, 20, 4, 256 << 10, 16),
    "skylake-avx512": DeviceModel(3.0, 2, 1, 12, 40, 8, 1 << 20, 32),
    "x86-64": DeviceModel(3.0, 2, 1, 12, 20, 4, 256 << 10, 16),
}
_FALLBACK = {"aarch64": _DEVICES["cortex-a76"], "x86_64": _DEVICES["haswell"]}
_PLANES = {"int8": 1, "float16": 2, "float32": 4}   # byte planes looked up per table entry
_ACC_BYTES = {"int16": 2, "int32": 4, "float32": 4}


def device_model(target) -> DeviceModel:
    from ..backend.target import get_target
    t = get_target(target)
    if t.cpu in _DEVICES:
        return _DEVICES[t.cpu]
    if t.is_host:
        import os
        base = _FALLBACK.get("aarch64" if t.is_aarch64 else t.arch, _DEVICES["x86-64"])
        return dataclasses.replace(base, cores=os.cpu_count() or 1)
    return _FALLBACK.get("aarch64" if t.is_aarch64 else t.arch, _DEVICES["x86-64"])


def estimate(schedule, shape, target="host", device: DeviceModel | None = None) -> dict:
    """Estimated seconds of one lut_gemm call (tables + gemm) of `schedule` for shape (M, N, K).

    Counts vector instructions of the unrolled loop (loads, index extraction, byte shuffles per
    table plane, widening and accumulation, register spills) and bytes moved (weights once per
    M block unless a tile stays in L2, tables per tile unless they stay in L2), and takes the
    larger of compute and memory time. Only for ranking: absolute numbers are rough guesses.
    """
    from ..backend.target import get_target
    t = get_target(target)
    dev = device or device_model(t)
    s = schedule
    M, N, K = (int(v) for v in shape)
    vbytes = t.vector_bits // 8
    ng = -(-K // s.group_size)
    tiles = -(-N // s.bn)
    planes, elem = _PLANES[s.lut_dtype], {"int8": 1, "float16": 2, "float32": 4}[s.lut_dtype]
    acc = _ACC_BYTES[s.acc_dtype]

    def vec(nbytes):
        return max(1, math.ceil(nbytes / vbytes))

    width = t.shuffle_bytes_width
    merge = (planes > 1) * vec(s.bn * elem) * int(math.log2(planes)) * 2  # re-interleave looked-up planes
    split = (planes > 1) * planes * vec(s.table_size * elem)            # split a table into byte planes
    if width:
        shuffles = planes * math.ceil(s.bn / width) + merge
        other = 0
    else:                                                   # select chain: 16 compare+select per vector
        shuffles, other = merge, 32 * planes * vec(s.bn)
    convert = vec(s.bn * 4) * (2 if s.lut_dtype == "float16" else 1 if s.lut_dtype == "int8" else 0)
    per_lookup = other + convert + vec(s.bn * acc)

    def tile_work(mb):
        """(vector ops, shuffles) of one pass of `mb` activation rows over a tile."""
        per_plane = vec(s.bn) + s.per_byte * (2 * vec(s.bn) + mb * per_lookup)
        ops = mb * s.per_byte * vec(s.table_size * elem) + s.bits * per_plane + 3 / s.unroll
        shuf = s.bits * s.per_byte * mb * shuffles + mb * s.per_byte * split
        live = mb * s.bits * vec(s.bn * acc) + mb * s.per_byte * planes * vec(16) + 4
        spill = 1.0 + max(0.0, live / dev.registers - 1.0)      # spills grow with excess pressure
        per_float = mb * (2 * s.bits + 1) * vec(s.bn * 4)                # int->float, FMA per plane, scale
        if s.scale_ratio:        # integer block ratios: int16 multiply-add per plane and block, float once
            epilogue = s.scale_blocks * mb * 2 * s.bits * vec(s.bn * acc) + per_float
        else:
            epilogue = s.scale_blocks * per_float
        epilogue += mb * 2 * vec(s.bn * 4) + (s.bits + 1) * vec(s.bn * 2)
        return ng * (s.chunks_per_group * ops * spill + epilogue), ng * s.chunks_per_group * shuf * spill

    blocks, rest = M // s.mb, M % s.mb                    # leftover rows: pairs when mb > 2, then mb = 1
    pairs = rest // 2 if s.mb > 2 else 0
    rest -= 2 * pairs
    main, pair, tail = tile_work(s.mb), tile_work(2), tile_work(1)
    per_tile_ops = blocks * main[0] + pairs * pair[0] + rest * tail[0]
    per_tile_shuf = blocks * main[1] + pairs * pair[1] + rest * tail[1]
    blocks += pairs + rest
    tile_cycles = max(per_tile_ops / dev.vec_issue, per_tile_shuf / max(dev.shuffle_issue, 1e-9))
    threads = max(1, min(s.threads or dev.cores, dev.cores))
    rounds = math.ceil(tiles / threads)                    # tiles run in rounds of `threads`
    table_cycles = M * ng * s.padded_tables * (s.table_size * planes / vbytes + s.g) / dev.vec_issue
    compute_s = (rounds * tile_cycles + table_cycles / min(threads, max(1, M * ng))) / (dev.ghz * 1e9)

    tile_w = ng * (s.chunks_per_group * s.bits * s.bn + (s.bits + 1) * s.bn * 2)
    passes = 1 if tile_w <= dev.l2_bytes // 2 else blocks
    lut_bytes = M * ng * s.padded_tables * s.table_size * elem
    lut_reads = lut_bytes if lut_bytes <= dev.l2_bytes // 2 else lut_bytes * tiles
    moved = tiles * tile_w * passes + lut_reads + 4 * M * (K + N)
    bw = min(dev.bw_max_gbs, dev.bw_thread_gbs * threads) * 1e9
    memory_s = moved / bw
    total = max(compute_s, memory_s) + 2 * 5e-6 * (threads > 1)
    return {"time_s": total, "compute_s": compute_s, "memory_s": memory_s, "bytes": moved,
            "bound": "memory" if memory_s >= compute_s else "compute", "model": MODEL, "source": "estimated"}


def rank(problem, target="host", space: dict | None = None, cores: int | None = None) -> list:
    """Every schedule of the tuner's search space for `problem` (lutc.tuning.space.Problem),
    fastest first by estimate (within 1%, as when memory-bound: least compute first): [(time_s, Schedule), ...]."""
    import itertools

    from ..tuning.space import DOT_ONLY, LUT_ONLY, invalid_reason, schedule_from_params, space_for
    cores = cores or device_model(target).cores
    space = space or space_for(problem, cores)
    scored = []
    for path in space["path"]:            # per path, only the knobs it reads (the others stay default)
        names = sorted(n for n in space if n not in (DOT_ONLY if path == "lut" else LUT_ONLY) and n != "path")
        for combo in itertools.product(*(space[n] for n in names)):
            try:
                sched = schedule_from_params(problem, dict(zip(names, combo), path=path))
            except ValueError:            # a combination no Schedule allows (e.g. the dot path with g=3)
                continue
            if invalid_reason(sched, problem) is not None:
                continue
            e = estimate(sched, (problem.M, problem.N, problem.K), target)
            scored.append((e["time_s"], e["compute_s"], sched.to_json(), sched))
    # estimates within 1% are ties (the model is not that precise); among them, least compute wins
    scored.sort(key=lambda e: (math.floor(math.log(e[0]) / math.log(1.01)), e[1], e[2]))
    return [(t, s) for t, _, _, s in scored]


def device_fingerprint(target) -> dict:
    """The fingerprint a db file of `target`'s device carries, built from the target and the
    model's core count (the same shape as lutc.tuning.device.host_fingerprint)."""
    from ..backend.target import get_target
    from ..tuning.device import device_id
    t = get_target(target)
    isa = "neon" if t.is_aarch64 else next((f.replace("bw", "") for f in ("avx512bw", "avx2", "ssse3") if t.has(f)),
                                           "sse2" if t.is_x86 else "scalar")
    fp = {"arch": t.arch, "triple": t.triple, "cpu": t.cpu, "cpu_model": "", "isa": isa,
          "vector_bits": t.vector_bits, "byte_shuffle": t.byte_shuffle,
          "features": [f for f in t.features.split(",") if f.startswith("+")], "cores": device_model(t).cores}
    fp["id"] = device_id(fp)
    return fp


def estimated_entry(problem, target) -> dict:
    """A tuning db entry for the model's best schedule, marked source='estimated'."""
    from ..ops import default_schedule
    from ..tuning.db import make_entry
    best_t, best = rank(problem, target)[0]
    d = estimate(default_schedule(problem.bits, problem.group_size, problem.M), (problem.M, problem.N, problem.K),
                 target)["time_s"]
    from ..backend.target import get_target
    return make_entry(best, problem.M, problem.N, problem.K, best_t, d, "estimated", model=MODEL,
                      target=get_target(target).name)
