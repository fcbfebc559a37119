"""Checks of a model's tensors against its DecoderConfig, and the "auto" thread-count chooser."""
from __future__ import annotations

import numpy as np
from lutc.launcher import default_threads

from .config import DecoderConfig, UnsupportedModelError, layer_names


class AutoThreads:
    """threads="auto": decode steps alternate short trials of 1..ncores threads, then run the one
    with the lowest median step time for a while, and re-measure (on a shared machine the best
    count changes with the load: a preempted pool worker stalls every parallel launch)."""

    TRIAL, RUN = 6, 250

    def __init__(self):
        self.options = list(range(default_threads(), 0, -1))
        self.current, self.times, self.step = self.options[0], {}, 0

    def next(self) -> int:
        cycle = self.TRIAL * len(self.options) + self.RUN
        i = self.step % cycle
        self.step += 1
        if i < self.TRIAL * len(self.options):
            self.current = self.options[i % len(self.options)]
            self.exploring = True
        else:
            if i == self.TRIAL * len(self.options):
                self.current = min(self.times, key=lambda t: sorted(self.times[t])[len(self.times[t]) // 2])
                self.times = {}
            self.exploring = False
        return self.current

    def record(self, seconds):
        if self.exploring:
            self.times.setdefault(self.current, []).append(seconds)


def check_model(qm, c: DecoderConfig):
    """A QuantizedModel has every linear and tensor of this family's layers, of the right shapes."""
    from .layers import expected_shapes
    lin_shapes, t_shapes = expected_shapes(c)
    missing = []
    for i in range(c.num_layers):
        n = layer_names(i, c.family)
        missing += [n[k] for k in lin_shapes if n[k] not in qm.linears]
        missing += [n[k] for k in t_shapes if n[k] not in qm.tensors]
    missing += [k for k in ("lm_head",) if k not in qm.linears]
    missing += [k for k in ("model.embed_tokens.weight", "model.norm.weight") if k not in qm.tensors]
    if missing:
        raise UnsupportedModelError(f"checkpoint is missing {len(missing)} {c.family}-family tensor(s), "
                                    f"e.g. {missing[:3]}")
    emb = qm.tensors["model.embed_tokens.weight"]
    if emb.shape != (c.vocab_size, c.hidden_size):
        raise UnsupportedModelError(f"embed_tokens: expected shape {(c.vocab_size, c.hidden_size)}, got {emb.shape}")
    for i in range(c.num_layers):
        n = layer_names(i, c.family)
        for k, shp in lin_shapes.items():
            got = tuple(qm.linears[n[k]].shape)
            if got != shp:
                raise UnsupportedModelError(f"{n[k]}: expected shape {shp}, got {got}")
        for k, shp in t_shapes.items():
            got = tuple(np.shape(qm.tensors[n[k]]))
            if got != shp:
                raise UnsupportedModelError(f"{n[k]}: expected shape {shp}, got {got}")


def check_packed(pm, c: DecoderConfig):
    """A PackedModel (pack cache) has every matrix and tensor this config needs, of the right shapes."""
    from .layers import expected_shapes
    H, V, F = c.hidden_size, c.vocab_size, c.intermediate_size
    fused = dict(qkv=(c.q_size + 2 * c.kv_size, H), o=(H, c.q_size), gate_up=(2 * F, H), down=(H, F))
    want = {f"{i}.{k}": shp for i in range(c.num_layers) for k, shp in fused.items()}
    want["lm_head"] = (V, H)
    tensors = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    t_shapes = expected_shapes(c)[1]
    for i in range(c.num_layers):
        n = layer_names(i, c.family)
        tensors.update({n[k]: shp for k, shp in t_shapes.items()})
    for key, shp in want.items():
        p = pm.packed.get(key)
        if p is None or (p.N, p.K) != shp:
            raise UnsupportedModelError(f"packed model: {key} should be {shp}, got "
                                        f"{None if p is None else (p.N, p.K)}")
    for name, shp in tensors.items():
        a = pm.tensors.get(name)
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shp:
            raise UnsupportedModelError(f"packed model: {name} should be float32 {shp}, got "
                                        f"{getattr(a, 'dtype', None)} {getattr(a, 'shape', None)}")
