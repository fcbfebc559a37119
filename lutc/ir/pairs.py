"""The pair order of `pair_madd` (lutc.language.pair_madd), stated once for every target."""
from __future__ import annotations


def pair_order(n: int) -> list[int]:
    """p with pair_madd(a, b, ra, rb)[i] = ra * a[p[i]] + rb * b[p[i]] for blocks of n lanes
    (n a multiple of 16). In every whole block of 32 lanes the 8-lane groups 1 and 2 trade
    places ([0..7, 16..23, 8..15, 24..31]: what x86's in-lane byte interleave of two 32-byte
    registers produces); a last block of 16 lanes keeps its order. p is its own inverse."""
    if n < 16 or n % 16:
        raise ValueError(f"pair order needs a multiple of 16 lanes, got {n}")
    p = []
    for base in range(0, n, 32):
        if base + 32 <= n:
            p += [base + i for i in (*range(8), *range(16, 24), *range(8, 16), *range(24, 32))]
        else:
            p += list(range(base, base + 16))
    return p
