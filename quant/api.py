"""quantize(): validate user input and fit float weights to a QuantizedTensor with RTN or HLQ."""

from __future__ import annotations

import numpy as np

from .hlq import hlq_fit
from .rtn import rtn_fit
from .tensor import QuantizedTensor, _is_int

__all__ = ["quantize", "METHODS"]

METHODS = ("hlq", "rtn")


def _as_float32_matrix(w) -> np.ndarray:
    """numpy array or CPU torch tensor -> C-contiguous float32 numpy (N, K); ValueError otherwise."""
    if type(w).__module__.split(".")[0] == "torch":  # torch stays unimported unless given a tensor
        import torch

        if not isinstance(w, torch.Tensor):
            raise ValueError(f"w: expected a numpy array or torch.Tensor, got {type(w).__name__}")
        if w.device.type != "cpu":
            raise ValueError(f"w: expected a CPU tensor, got device {w.device}")
        if w.is_complex():
            raise ValueError(f"w: expected a real floating tensor, got dtype {w.dtype}")
        w = w.detach().to(torch.float32).contiguous().numpy()
    else:
        w = np.asarray(w)
        if w.dtype.kind not in "fiub":
            raise ValueError(f"w: expected a real numeric array, got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"w: expected a 2-D (N, K) array, got {w.ndim}-D with shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"w: expected a non-empty array, got shape {w.shape}")
    orig = w
    with np.errstate(over="ignore"):
        w = np.ascontiguousarray(w, dtype=np.float32)
    bad = ~np.isfinite(w)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"w: expected finite float32 values, got {int(bad.sum())} NaN/inf entries "
                         f"(first at [{r}, {c}] = {orig[r, c]})")
    return w


def quantize(w, bits: int, group_size: int = 128, method: str = "hlq", rounds: int = 15) -> QuantizedTensor:
    """Quantize an (N, K) float matrix (numpy or CPU torch) per row in groups of `group_size` along K.

    method="rtn": uniform min/max grid. method="hlq": ELUTQ alternating fit from the RTN start,
    `rounds` rounds; per (row, group) its squared error is never worse than RTN's.
    """
    if not _is_int(bits) or not 1 <= bits <= 4:
        raise ValueError(f"bits: expected an int in 1..4, got {bits!r}")
    if not _is_int(group_size) or group_size < 1:
        raise ValueError(f"group_size: expected an int >= 1, got {group_size!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if not _is_int(rounds) or rounds < 0:
        raise ValueError(f"rounds: expected an int >= 0, got {rounds!r}")
    bits, group_size, rounds = int(bits), int(group_size), int(rounds)
    w = _as_float32_matrix(w)
    if method == "rtn":
        codes, scales, zeros = rtn_fit(w, bits, group_size)
    else:
        codes, scales, zeros = hlq_fit(w, bits, group_size, rounds)
    return QuantizedTensor(bits=bits, group_size=group_size, shape=tuple(int(d) for d in w.shape),
                           codes=codes, scales=scales, zeros=zeros, method=method)
