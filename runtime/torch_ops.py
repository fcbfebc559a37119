"""Torch integration: the `lutc::lut_linear` custom op, LUTLinear (lutc's one nn.Module layer),
replace_linears (swap a model's nn.Linear layers in place) and LUT-kernel HF models."""
from __future__ import annotations

import functools
import json
import threading
import weakref

import numpy as np
import quant
import torch
from lutc.kernels.packing import PackedWeights
from lutc.ops import get_kernel
from lutc.schedule import Schedule
from quant.torch_model import build_torch_model

from .config import DecoderConfig
from .linear import schedules

_PACKED = weakref.WeakValueDictionary()  # (w ptr, sz ptr, meta) -> PackedWeights (held by its LUTLinear)
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=256)
def _parse_meta(meta: str):
    """(decode schedule, prefill schedule, N, K) of a LUTLinear's meta string."""
    d = json.loads(meta)
    return Schedule.from_dict(d["decode"]), Schedule.from_dict(d["prefill"]), int(d["N"]), int(d["K"])


def _packed_for(w: torch.Tensor, sz: torch.Tensor, meta: str, s: Schedule, N, K):
    key = (w.data_ptr(), sz.data_ptr(), meta)
    p = _PACKED.get(key)
    if p is None:   # tensors not made by a live LUTLinear (e.g. copied): wrap them, uncached
        p = PackedWeights(s.layout_key, N, K, -(-K // s.group_size), -(-N // s.bn), w.contiguous().numpy(),
                          sz.contiguous().numpy().view(np.float16))
    return p


@torch.library.custom_op("lutc::lut_linear", mutates_args=())
def lut_linear(x: torch.Tensor, w: torch.Tensor, sz: torch.Tensor, meta: str) -> torch.Tensor:
    """y = x @ W_hat^T with lutc kernels; w/sz are the packed weights, meta their schedules and shape."""
    dec, pre, N, K = _parse_meta(meta)
    if x.shape[-1] != K:
        raise ValueError(f"lut_linear: expected input (..., {K}), got {tuple(x.shape)}")
    lead = x.shape[:-1]
    xa = x.reshape(-1, K).to(torch.float32).contiguous().numpy()
    M = xa.shape[0]
    y = np.empty((M, N), np.float32)
    if M:
        p = _packed_for(w, sz, meta, dec, N, K)
        get_kernel(dec if M == 1 else pre).plan(p, M)(xa, y, torch.get_num_threads())
    return torch.from_numpy(y).reshape(*lead, N).to(x.dtype)


@lut_linear.register_fake
def _(x, w, sz, meta):
    N = int(json.loads(meta)["N"])
    return x.new_empty((*x.shape[:-1], N))


class LUTLinear(torch.nn.Module):
    """A drop-in nn.Linear replacement whose weights are b-bit lutc-packed (buffers, no float copy)."""

    def __init__(self, qt, bias=None, lut_dtype=None, max_prefill=128):
        super().__init__()
        dec, pre = schedules(qt.bits, qt.group_size, qt.N, qt.K, lut_dtype, max_prefill)
        kern = get_kernel(dec)
        packed = kern.pack(qt)
        self.in_features, self.out_features = qt.K, qt.N
        self.bits, self.group_size = qt.bits, qt.group_size
        self.meta = json.dumps(dict(decode=dec.to_dict(), prefill=pre.to_dict(), N=qt.N, K=qt.K), sort_keys=True)
        # fp16 scales are stored as raw bytes so that model.to(dtype) / .half() cannot convert them
        self.register_buffer("w", torch.from_numpy(packed.w))
        self.register_buffer("sz", torch.from_numpy(packed.sz.view(np.uint8)))
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self._packed = packed
        with _LOCK:
            _PACKED[(self.w.data_ptr(), self.sz.data_ptr(), self.meta)] = packed

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, bits=4, group_size=128, method="rtn", lut_dtype=None):
        qt = quant.quantize(linear.weight.detach(), bits, group_size, method=method)
        return cls(qt, linear.bias, lut_dtype=lut_dtype)

    def forward(self, x):
        y = torch.ops.lutc.lut_linear(x, self.w, self.sz, self.meta)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


def replace_linears(model, bits=4, group_size=128, method="rtn", lut_dtype=None, lm_head=True, skip=(),
                    quantized=None):
    """Replace every nn.Linear of a transformers LLaMA-family model by a LUTLinear, in place.

    method: "rtn" or "hlq" (per-matrix quant.quantize); for GPTQ-style methods quantize with
    quant.quantize_model and pass its `linears` dict as `quantized`. Returns the model.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    arch = getattr(getattr(model, "config", None), "model_type", None)
    if arch is not None:
        DecoderConfig.from_hf(model.config.to_dict())         # UnsupportedModelError for other families
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and n not in skip and (lm_head or n != "lm_head")]
    for name, lin in targets:
        if quantized is not None and name in quantized:
            new = LUTLinear(quantized[name], lin.bias, lut_dtype=lut_dtype)
        else:
            new = LUTLinear.from_linear(lin, bits, group_size, method, lut_dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def lut_linear_factory(lut_dtype=None):
    """A `linear(name, qt, has_bias)` factory for quant.torch_model / quant.eval: LUTLinear layers
    with `lut_dtype` tables (None = the chosen schedule's); a bias is loaded with the tensors."""
    def make(name, qt, has_bias):
        return LUTLinear(qt, torch.empty(qt.N, device="meta") if has_bias else None, lut_dtype=lut_dtype)
    make.__name__ = f"lut ({lut_dtype or 'default'} tables)"
    return make


def build_lut_model(qm, lut_dtype=None):
    """An HF causal LM (eval mode) of a quant.QuantizedModel whose linears are LUTLinear layers
    and hold no float weights."""
    return build_torch_model(qm, linear=lut_linear_factory(lut_dtype))
