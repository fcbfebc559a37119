"""Packing a QuantizedTensor into the tiled bit-plane index layout a Schedule expects."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class PackedWeights:
    """Weights in kernel layout.

    w:  uint8 [tile][group][chunk][plane][bn] ('chunk') or [tile][group][plane][chunk][bn]
        ('plane'); each byte holds `per_byte` table indices of one row and bit-plane.
    sz: float16 [tile][group][bits + 1][bn]: the bit-plane scales, then the zero.
    """

    layout_key: tuple
    N: int
    K: int
    num_groups: int
    num_tiles: int
    w: np.ndarray
    sz: np.ndarray
    plans: dict = dataclasses.field(default_factory=dict, init=False, repr=False)   # CompiledKernel.plan's

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + self.sz.nbytes

    def check(self, sched) -> None:
        """ValueError unless these arrays are exactly what `sched`'s kernels read for (N, K)."""
        if tuple(self.layout_key) != sched.layout_key:
            raise ValueError(f"weights: packed for layout {self.layout_key}, kernel expects {sched.layout_key}")
        bits, gs, bn = sched.bits, sched.group_size, sched.bn
        ints = (self.N, self.K, self.num_groups, self.num_tiles)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ints):
            raise ValueError(f"weights: N, K, num_groups, num_tiles must be ints >= 1, got {ints}")
        if self.num_groups != -(-self.K // gs) or self.num_tiles != -(-self.N // bn):
            raise ValueError(f"weights: num_groups={self.num_groups}, num_tiles={self.num_tiles} do not match "
                             f"N={self.N}, K={self.K} (expected {-(-self.K // gs)}, {-(-self.N // bn)})")
        expect = {"w": (np.uint8, self.num_tiles * self.num_groups * sched.chunks_per_group * bits * bn),
                  "sz": (np.float16, self.num_tiles * self.num_groups * (bits + 1) * bn)}
        for name, (dt, size) in expect.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != dt or a.size != size or not a.flags.c_contiguous:
                raise ValueError(f"weights.{name}: expected a C-contiguous {np.dtype(dt).name} array of "
                                 f"{size} elements, got {getattr(a, 'dtype', type(a).__name__)} "
                                 f"of {getattr(a, 'size', '?')}")


def pack_weights(qw, sched) -> PackedWeights:
    """Lay out qw's codes, scales and zeros for `sched` (rows padded to a multiple of bn)."""
    N, K = qw.shape
    gs, g, bn, bits = sched.group_size, sched.g, sched.bn, sched.bits
    ng = -(-K // gs)
    tiles = -(-N // bn)
    n_pad = tiles * bn
    tpgp, cpg, pb, sb = sched.padded_tables, sched.chunks_per_group, sched.per_byte, sched.slot_bits
    codes = np.zeros((n_pad, ng, tpgp * g), np.uint8)
    full = np.zeros((n_pad, ng * gs), np.uint8)
    full[:N, :K] = qw.codes
    codes[:, :, :gs] = full.reshape(n_pad, ng, gs)
    codes = codes.reshape(n_pad, ng, tpgp, g)
    planes = np.empty((bits, n_pad, ng, cpg), np.uint8)
    for b in range(bits):
        bit = (codes >> b) & 1
        idx = np.zeros((n_pad, ng, tpgp), np.uint8)
        for j in range(g):
            idx |= bit[..., j] << j
        idx = idx.reshape(n_pad, ng, cpg, pb)
        byte = np.zeros((n_pad, ng, cpg), np.uint8)
        for s in range(pb):
            byte |= idx[..., s] << (s * sb)
        planes[b] = byte
    planes = planes.reshape(bits, tiles, bn, ng, cpg)
    order = (1, 3, 4, 0, 2) if sched.interleave == "chunk" else (1, 3, 0, 4, 2)
    w = np.ascontiguousarray(planes.transpose(order)).reshape(-1)
    sz_full = np.zeros((bits + 1, n_pad, ng), np.float16)
    sz_full[:bits, :N] = qw.scales
    sz_full[bits, :N] = qw.zeros
    sz = np.ascontiguousarray(sz_full.reshape(bits + 1, tiles, bn, ng).transpose(1, 3, 0, 2)).reshape(-1)
    return PackedWeights(sched.layout_key, N, K, ng, tiles, w, sz)
