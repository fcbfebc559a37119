"""LinearWeights: one quantized matrix as the runtime runs it: a decode (M=1) and a prefill
schedule sharing one packed layout, the packed weights, and launches bound to fixed buffers."""
from __future__ import annotations

import numpy as np
import quant
from lutc.kernels import PackedWeights
from lutc.ops import BATCH_M, choose_schedule, get_kernel


class StalePackError(ValueError):
    """Prepacked weights whose layout no longer matches the schedule lutc chooses now."""


def schedules(bits, group_size, N, K, lut_dtype=None, m_prefill=128, knobs=None):
    """(decode, prefill) Schedules for an N x K matrix; the prefill one keeps the decode layout.
    lut_dtype and `knobs` (e.g. {"lut_scale_block": 128}) override the chosen schedules' knobs."""
    dec = _with_knobs(choose_schedule(bits, group_size, 1, N, K), lut_dtype, knobs)
    return dec, batch_schedule(dec, bits, group_size, max(m_prefill, 1), N, K, lut_dtype, knobs)


def batch_schedule(dec, bits, group_size, m, N, K, lut_dtype=None, knobs=None):
    """The schedule for m rows (a decode batch or a prefill chunk) in `dec`'s packed layout."""
    s = _with_knobs(choose_schedule(bits, group_size, m, N, K), lut_dtype, knobs)
    return s.replace(g=dec.g, bn=dec.bn, interleave=dec.interleave)        # same layout: pack once


def _with_knobs(s, lut_dtype, knobs):
    knobs = dict(knobs or {}, **({"lut_dtype": lut_dtype} if lut_dtype is not None else {}))
    return s.replace(**knobs) if knobs else s


class LinearWeights:
    """y = x @ W_hat^T for a QuantizedTensor (packed here; codes are not kept) or for weights
    already packed (PackedWeights from the pack cache). `bind(x, y, m)` gives the two launches
    (table build, GEMM) for rows 0..m-1 of the buffers x and y: m == 1 runs the decode schedule,
    2..BATCH_M rows (a decode batch) a schedule chosen for that m (its own `mb`), more rows the
    prefill one. All share one packed layout; one scratch of max_m rows serves every m."""

    def __init__(self, weights, max_m=1, lut_dtype=None, name="", knobs=None):
        self.name, self.max_m = name, max(int(max_m), 1)
        if isinstance(weights, PackedWeights):
            self.bits, self.group_size = weights.layout_key[:2]
        elif isinstance(weights, quant.QuantizedTensor):
            self.bits, self.group_size = weights.bits, weights.group_size
        else:
            raise TypeError(f"{name}: expected a QuantizedTensor or PackedWeights, got {type(weights).__name__}")
        self.N, self.K = weights.N, weights.K
        self.sched_decode, self.sched_prefill = schedules(self.bits, self.group_size, self.N, self.K,
                                                          lut_dtype, self.max_m, knobs)
        self.k_decode, self.k_prefill = get_kernel(self.sched_decode), get_kernel(self.sched_prefill)
        self._knobs = (lut_dtype, knobs)
        self._k_batch = {}
        if isinstance(weights, PackedWeights):
            if tuple(weights.layout_key) != self.sched_decode.layout_key:
                raise StalePackError(f"{name}: packed for {weights.layout_key}, schedule wants "
                                     f"{self.sched_decode.layout_key}")
            self.packed = weights
        else:
            self.packed = self.k_decode.pack(weights)
        self.scratch = self.k_prefill.scratch(self.packed, self.max_m)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def bind(self, x: np.ndarray, y: np.ndarray, m: int):
        """(tables, gemm) BoundLaunches reading x[:m] and writing y[:m]; they keep x and y alive."""
        if not 1 <= m <= self.max_m:
            raise ValueError(f"{self.name}: m={m} outside 1..{self.max_m}")
        return self.kernel_for(m).prepare(self.packed, m, x=x, y=y, scratch=self.scratch).launches()

    def kernel_for(self, m: int):
        """The CompiledKernel that runs m rows."""
        if m == 1:
            return self.k_decode
        if m > BATCH_M:
            return self.k_prefill
        k = self._k_batch.get(m)
        if k is None:
            s = batch_schedule(self.sched_decode, self.bits, self.group_size, m, self.N, self.K, *self._knobs)
            k = self._k_batch[m] = get_kernel(s)        # prepare() checks that the scratch fits it
        return k


def concat_rows(qts):
    """QuantizedTensors of one bits/group_size/K stacked along N (fuses q/k/v or gate/up)."""
    first = qts[0]
    for q in qts[1:]:
        if (q.bits, q.group_size, q.K) != (first.bits, first.group_size, first.K):
            raise ValueError("cannot fuse matrices with different bits, group_size or K")
    return quant.QuantizedTensor(bits=first.bits, group_size=first.group_size,
                                 shape=(sum(q.N for q in qts), first.K),
                                 codes=np.concatenate([q.codes for q in qts], 0),
                                 scales=np.concatenate([q.scales for q in qts], 1),
                                 zeros=np.concatenate([q.zeros for q in qts], 0), method=first.method)
