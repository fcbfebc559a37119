"""The pair order of `pair_madd` (lutc.language.pair_madd), stated once for every target."""
from __future__ import annotations


def pair_order(n: int, width: int = 32) -> list[int]:
    """p with pair_madd(a, b, ra, rb)[i] = ra * a[p[i]] + rb * b[p[i]] for blocks of n lanes
    (n a multiple of 16), for a target whose pair width (lutc.backend.pairs.pair_width) is
    `width` (16, 32 or 64): the order of x86's in-lane byte interleave (vpunpcklbw, vpunpckhbw)
    of two registers of `width` bytes. In every whole block of `width` lanes, first the lanes
    0..7 of each 16-lane part, then the lanes 8..15 of each (width 32: [0..7, 16..23, 8..15,
    24..31]); a tail shorter than `width` is ordered the same way at the next smaller width
    (16 lanes keep their order). p is its own inverse for width <= 32, not for 64."""
    if n < 16 or n % 16:
        raise ValueError(f"pair order needs a multiple of 16 lanes, got {n}")
    if width not in (16, 32, 64):
        raise ValueError(f"pair width must be 16, 32 or 64, got {width}")
    p, base = [], 0
    while base < n:
        w = width
        while base + w > n:
            w //= 2
        p += [base + part + half + j for half in (0, 8) for part in range(0, w, 16) for j in range(8)]
        base += w
    return p


def inverse(p: list[int]) -> list[int]:
    """q with q[p[i]] = i."""
    q = [0] * len(p)
    for i, v in enumerate(p):
        q[v] = i
    return q
