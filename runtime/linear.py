"""LinearWeights: one quantized matrix as the runtime runs it: a schedule per M bucket (decode rows,
small batches, prefill chunks; each on the LUT or the dot path as the schedule says) sharing one
packed layout, the packed weights, and launches bound to fixed buffers."""
from __future__ import annotations

import numpy as np
import quant
from lutc.kernels import PackedWeights
from lutc.kernels.compiled import Scratch
from lutc.ops import choose_schedule, get_kernel
from lutc.schedule import m_bucket


class StalePackError(ValueError):
    """Prepacked weights whose layout no longer matches the schedule lutc chooses now."""


def bucket_schedules(bits, group_size, N, K, lut_dtype=None, max_m=128, knobs=None) -> dict:
    """{M bucket: Schedule} for every bucket up to m_bucket(max_m) (1, 2, 4, ...), each chosen for
    its bucket (tuning db, else the default) in the decode (bucket 1) schedule's packed layout, so
    the weights are packed once. lut_dtype and `knobs` (e.g. {"path": "lut"}) override every
    bucket's knobs; float tables (lut_dtype float16/float32, a request for near-exact products,
    which int8 activations cannot give) also mean path="lut" unless `knobs` set the path."""
    knobs = dict(knobs or {}, **({"lut_dtype": lut_dtype} if lut_dtype is not None else {}))
    if knobs.get("lut_dtype", "int8") != "int8":
        knobs.setdefault("path", "lut")
    out, b = {}, 1
    while True:
        s = choose_schedule(bits, group_size, b, N, K)
        if knobs:
            s = s.replace(**knobs)
        out[b] = s if b == 1 else s.with_layout(out[1])
        if b >= m_bucket(max(max_m, 1)):
            return out
        b *= 2


def schedules(bits, group_size, N, K, lut_dtype=None, m_prefill=128, knobs=None):
    """(decode, prefill) Schedules for an N x K matrix: buckets 1 and m_bucket(m_prefill)."""
    by = bucket_schedules(bits, group_size, N, K, lut_dtype, m_prefill, knobs)
    return by[1], by[max(by)]


class LinearWeights:
    """y = x @ W_hat^T for a QuantizedTensor (packed here; codes are not kept) or for weights
    already packed (PackedWeights from the pack cache). `bind(x, y, m)` gives the two launches
    (tables or activation quantization, then the GEMM) for rows 0..m-1 of the buffers x and y with
    the schedule of m's bucket (`schedule_for(m)`). One scratch of max_m rows serves every m."""

    def __init__(self, weights, max_m=1, lut_dtype=None, name="", knobs=None):
        self.name, self.max_m = name, max(int(max_m), 1)
        if isinstance(weights, PackedWeights):
            self.bits, self.group_size = weights.layout_key[:2]
        elif isinstance(weights, quant.QuantizedTensor):
            self.bits, self.group_size = weights.bits, weights.group_size
        else:
            raise TypeError(f"{name}: expected a QuantizedTensor or PackedWeights, got {type(weights).__name__}")
        self.N, self.K = weights.N, weights.K
        self.by_bucket = bucket_schedules(self.bits, self.group_size, self.N, self.K, lut_dtype, self.max_m, knobs)
        self.sched_decode = self.by_bucket[1]
        self._kernels = {}
        self.k_decode = self.kernel_for(1)
        if isinstance(weights, PackedWeights):
            if tuple(weights.layout_key) != self.sched_decode.layout_key:
                raise StalePackError(f"{name}: packed for {weights.layout_key}, schedule wants "
                                     f"{self.sched_decode.layout_key}")
            self.packed = weights
        else:
            self.packed = self.k_decode.pack(weights)
        self.scratch = Scratch.for_schedules(self.by_bucket.values(), self.max_m, self.packed.num_groups)

    @property
    def sched_prefill(self):
        """The schedule of the largest bucket (full prefill chunks)."""
        return self.by_bucket[max(self.by_bucket)]

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def schedule_for(self, m: int):
        return self.by_bucket[m_bucket(m)]

    def kernel_for(self, m: int):
        """The CompiledKernel of m's bucket (compiled on first use; identical schedules share one)."""
        b = m_bucket(m)
        k = self._kernels.get(b)
        if k is None:
            k = self._kernels[b] = get_kernel(self.by_bucket[b])
        return k

    def bind(self, x: np.ndarray, y: np.ndarray, m: int):
        """(tables, gemm) BoundLaunches reading x[:m] and writing y[:m]; they keep x and y alive."""
        if not 1 <= m <= self.max_m:
            raise ValueError(f"{self.name}: m={m} outside 1..{self.max_m}")
        return self.kernel_for(m).prepare(self.packed, m, x=x, y=y, scratch=self.scratch).launches()


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
