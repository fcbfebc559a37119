"""QuantizedTensor: b-bit codes with per-bit-plane fp16 scales and per-group fp16 zeros (HLQ format)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["QuantizedTensor", "bitplanes", "code_values"]

_ROW_CHUNK_ELEMS = 1 << 18  # dequantize works on row chunks of about this many weights (a 2 MB int64 index;
# 1 << 21 with two index temporaries put 32 MB on streaming hlq-gptq's peak, docs/quantization.md)


def bitplanes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Split integer codes into `bits` planes: out[i] = (codes >> i) & 1, dtype uint8, shape (bits, *codes.shape)."""
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes: expected an integer array, got dtype {codes.dtype}")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits: expected an int in 1..8, got {bits!r}")
    shifts = np.arange(int(bits), dtype=codes.dtype).reshape((-1,) + (1,) * codes.ndim)
    return ((codes[None] >> shifts) & 1).astype(np.uint8)


def code_values(scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """Value of every code per (row, group): v[..., c] = sum_i s_i * bit_i(c) + z, in float32.

    `scales` has shape (bits, ...) and `zeros` shape (...). The float32 operations run in the
    same order as in QuantizedTensor.dequantize, so both give bit-identical values.
    """
    bits = scales.shape[0]
    planes = bitplanes(np.arange(1 << bits, dtype=np.uint8), bits).astype(np.float32)  # (bits, C)
    acc = np.zeros(zeros.shape + (1 << bits,), dtype=np.float32)
    for i in range(bits):
        acc += scales[i].astype(np.float32)[..., None] * planes[i]
    acc += zeros.astype(np.float32)[..., None]
    return acc


def _check_array(name: str, arr, dtype, shape) -> None:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {arr.strides}")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class QuantizedTensor:
    """An (N, K) weight matrix in HLQ form: w_hat = sum_i scales[i] * bit_i(codes) + zeros, per group of K."""

    bits: int
    group_size: int
    shape: tuple
    codes: np.ndarray  # uint8 (N, K), values 0 .. 2**bits - 1
    scales: np.ndarray  # float16 (bits, N, G)
    zeros: np.ndarray  # float16 (N, G)
    method: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ----- shape helpers -------------------------------------------------------------
    @property
    def N(self) -> int:
        return int(self.shape[0])

    @property
    def K(self) -> int:
        return int(self.shape[1])

    @property
    def num_groups(self) -> int:
        return math.ceil(self.K / self.group_size)

    @property
    def nbytes_packed(self) -> int:
        """Bytes when codes are bit-packed and every scale and zero is fp16."""
        code_bytes = math.ceil(self.bits * self.N * self.K / 8)
        return code_bytes + 2 * (self.bits + 1) * self.N * self.num_groups

    # ----- checks -----------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError (naming expected vs actual) unless every field is consistent."""
        if not _is_int(self.bits) or not 1 <= self.bits <= 4:
            raise ValueError(f"bits: expected an int in 1..4, got {self.bits!r}")
        if not _is_int(self.group_size) or self.group_size < 1:
            raise ValueError(f"group_size: expected an int >= 1, got {self.group_size!r}")
        shape = self.shape
        if (not isinstance(shape, tuple) or len(shape) != 2
                or not all(_is_int(d) and d >= 1 for d in shape)):
            raise ValueError(f"shape: expected a tuple (N, K) of two ints >= 1, got {shape!r}")
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError(f"method: expected a str or None, got {type(self.method).__name__}")
        n, k = int(shape[0]), int(shape[1])
        g = math.ceil(k / self.group_size)
        _check_array("codes", self.codes, np.uint8, (n, k))
        _check_array("scales", self.scales, np.float16, (self.bits, n, g))
        _check_array("zeros", self.zeros, np.float16, (n, g))
        top = int(self.codes.max())
        if top >= 1 << self.bits:
            raise ValueError(f"codes: expected values in 0..{(1 << self.bits) - 1} for "
                             f"bits={self.bits}, got max {top}")
        for name, arr in (("scales", self.scales), ("zeros", self.zeros)):
            if not np.isfinite(arr).all():
                raise ValueError(f"{name}: expected finite values, got {int((~np.isfinite(arr)).sum())} "
                                 "NaN/inf entries")

    # ----- reconstruction ---------------------------------------------------------------
    def dequantize(self) -> np.ndarray:
        """Float32 (N, K) reconstruction; partial last group handled, computed from fp16 params in float32."""
        n, k, g, gs = self.N, self.K, self.num_groups, self.group_size
        ncodes = 1 << self.bits
        table = code_values(self.scales, self.zeros).reshape(-1)  # (N * G * C,)
        group_of_k = (np.arange(k, dtype=np.intp) // gs) * ncodes  # (K,)
        out = np.empty((n, k), dtype=np.float32)
        step = max(1, _ROW_CHUNK_ELEMS // k)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            rows = np.arange(r0, r1, dtype=np.intp)[:, None] * (g * ncodes)
            idx = rows + group_of_k[None, :]
            idx += self.codes[r0:r1]  # in place: one index temporary
            out[r0:r1] = table[idx]
        return out

    def __repr__(self) -> str:
        return (f"QuantizedTensor(shape={tuple(int(d) for d in self.shape)}, bits={self.bits}, "
                f"group_size={self.group_size}, num_groups={self.num_groups}, "
                f"method={self.method!r}, nbytes_packed={self.nbytes_packed})")
