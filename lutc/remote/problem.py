"""What client and runner exchange besides frames: problems, software versions, timing options."""
from __future__ import annotations

import functools
import hashlib
import math

import numpy as np

from .protocol import ProtocolError, split_sections

MAX_DIM = 1 << 20                     # N, K and M beyond this are refused before allocating
# timing options a client may set, with their accepted ranges (lutc.tuning.timing.time_guarded)
TIMING_LIMITS = {"repeats": (int, 1, 100), "retries": (int, 0, 5), "warmup_s": (float, 0.0, 5.0),
                 "min_repeat_s": (float, 0.0, 1.0), "cutoff_s": (float, 0.0, 600.0),
                 "max_contention": (float, 0.0, 1024.0)}
TIMING_CHOICES = {"cache": ("cold", "hot"), "stat": ("median", "min")}


@functools.lru_cache(maxsize=1)
def software() -> dict:
    """Versions that decide the bytes of a compiled kernel: both ends must agree on them."""
    import llvmlite
    import llvmlite.binding as llvm

    from .. import __version__
    from ..kernels.gemm import build_tables, lut_gemm
    kernels = hashlib.sha256(f"{build_tables.source_hash()}|{lut_gemm.source_hash()}".encode()).hexdigest()[:16]
    return {"lutc": __version__, "llvmlite": llvmlite.__version__,
            "llvm": ".".join(map(str, llvm.llvm_version_info)), "kernels": kernels}


def encode_problem(qw, x: np.ndarray):
    """(header fields, payload) for a QuantizedTensor and float32 activations x (M, K).

    Codes travel as packed bit-planes (bits * N * K / 8 bytes), scales and zeros as float16."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != qw.K:
        raise ValueError(f"x: expected shape (M, {qw.K}), got {x.shape}")
    planes = [np.packbits(((qw.codes >> b) & 1).astype(np.uint8).reshape(-1)) for b in range(qw.bits)]
    parts = {"planes": b"".join(p.tobytes() for p in planes), "scales": qw.scales.tobytes(),
             "zeros": qw.zeros.tobytes(), "x": x.tobytes()}
    fields = {"bits": qw.bits, "group_size": qw.group_size, "N": qw.N, "K": qw.K, "M": int(x.shape[0]),
              "sections": [[k, len(v)] for k, v in parts.items()]}
    return fields, b"".join(parts.values())


def _int_field(h, name, lo, hi):
    v = h.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(f"problem: {name} must be an int in {lo}..{hi}, got {v!r}")
    return v


def decode_problem(h: dict, payload: bytes):
    """(QuantizedTensor, x) from a 'problem' message; every size is checked against the header."""
    import quant
    bits = _int_field(h, "bits", 1, 4)
    gs = _int_field(h, "group_size", 1, MAX_DIM)
    N, K, M = (_int_field(h, n, 1, MAX_DIM) for n in ("N", "K", "M"))
    ng = math.ceil(K / gs)
    parts = split_sections(payload, h.get("sections"), "problem")
    want = {"planes": bits * math.ceil(N * K / 8), "scales": 2 * bits * N * ng, "zeros": 2 * N * ng,
            "x": 4 * M * K}
    got = {k: len(v) for k, v in parts.items()}
    if got != want:
        raise ProtocolError(f"problem: section sizes {got}, expected {want}")
    plane = math.ceil(N * K / 8)
    codes = np.zeros(N * K, np.uint8)
    raw = np.frombuffer(parts["planes"], np.uint8)
    for b in range(bits):
        codes |= np.unpackbits(raw[b * plane:(b + 1) * plane])[:N * K] << b
    scales = np.frombuffer(parts["scales"], np.float16).reshape(bits, N, ng).copy()
    zeros = np.frombuffer(parts["zeros"], np.float16).reshape(N, ng).copy()
    x = np.frombuffer(parts["x"], np.float32).reshape(M, K).copy()
    try:
        qw = quant.QuantizedTensor(bits, gs, (N, K), codes.reshape(N, K), scales, zeros)
    except ValueError as e:
        raise ProtocolError(f"problem: {e}") from None
    if not np.isfinite(x).all():
        raise ProtocolError("problem: x has non-finite values")
    return qw, x


def timing_options(t) -> dict:
    """The client's timing options, type- and range-checked; unknown keys are an error."""
    if t is None:
        return {}
    if not isinstance(t, dict):
        raise ProtocolError("timing must be an object")
    out = {}
    for k, v in t.items():
        if k in TIMING_CHOICES:
            if v not in TIMING_CHOICES[k]:
                raise ProtocolError(f"timing: {k} must be one of {TIMING_CHOICES[k]}, got {v!r}")
            out[k] = v
            continue
        if k not in TIMING_LIMITS:
            raise ProtocolError(f"timing: unknown option {k!r} (known: {', '.join([*TIMING_CHOICES, *TIMING_LIMITS])})")
        if v is None and k == "cutoff_s":
            continue
        typ, lo, hi = TIMING_LIMITS[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and not isinstance(v, int)) \
                or not lo <= v <= hi:
            raise ProtocolError(f"timing: {k} must be a {typ.__name__} in {lo}..{hi}, got {v!r}")
        out[k] = typ(v)
    return out
