"""Round-to-nearest (RTN) uniform asymmetric min/max quantization, expressed in HLQ form."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rtn_fit", "group_view"]


def group_view(w: np.ndarray, group_size: int, mode: str = "edge") -> np.ndarray:
    """Pad (N, K) along K to a multiple of group_size and view it as (N, G, group_size).

    mode="edge" repeats the last column (min/max unaffected); mode="zero" pads with zeros.
    """
    n, k = w.shape
    g = math.ceil(k / group_size)
    pad = g * group_size - k
    if pad:
        if mode == "edge":
            w = np.pad(w, ((0, 0), (0, pad)), mode="edge")
        else:
            w = np.pad(w, ((0, 0), (0, pad)))
    return np.ascontiguousarray(w).reshape(n, g, group_size)


def rtn_fit(w: np.ndarray, bits: int, group_size: int):
    """Uniform min/max fit of float32 w (N, K).

    Returns (codes uint8 (N, K), scales fp16 (bits, N, G), zeros fp16 (N, G)) with
    scales[i] = 2**i * s and zeros = min. s and z are rounded to fp16 first, then each weight
    gets the code nearest to it on the stored fp16 grid. A constant group gets s = 0, code 0
    and z = its value (exact up to fp16 rounding).
    """
    n, k = w.shape
    top = (1 << bits) - 1
    wg = group_view(w, group_size, mode="edge")  # (N, G, gs)
    lo = wg.min(axis=-1)
    hi = wg.max(axis=-1)
    with np.errstate(over="ignore"):
        s16 = ((hi - lo) / np.float32(top)).astype(np.float16)
        z16 = lo.astype(np.float16)
        scales = (s16[None].astype(np.float32)
                  * (2.0 ** np.arange(bits, dtype=np.float32))[:, None, None]).astype(np.float16)
    if not (np.isfinite(scales).all() and np.isfinite(z16).all()):
        raise ValueError("weights too large for fp16 scales/zeros: a group's min or its top plane "
                         f"scale 2**{bits - 1} * (max - min) / {top} exceeds the fp16 max 65504 "
                         f"(max |w| = {float(np.abs(w).max()):.6g})")
    s = s16.astype(np.float32)[..., None]
    safe = np.where(s > 0, s, np.float32(1))
    q = np.rint((wg - z16.astype(np.float32)[..., None]) / safe)
    q = np.where(s > 0, np.clip(q, 0, top), 0)
    codes = q.astype(np.uint8).reshape(n, -1)[:, :k]
    return np.ascontiguousarray(codes), scales, z16
