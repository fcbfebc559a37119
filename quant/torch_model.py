"""A runnable torch HF model from a QuantizedModel: fake-quant (dequantized float32) or LUT-kernel linears."""

from __future__ import annotations

import threading

import numpy as np
import torch

from .model import QuantizedModel
from .tensor import QuantizedTensor

__all__ = ["LutLinear", "build_torch_model", "MODES", "LUT_DTYPES"]

MODES = ("fake", "lut")
LUT_DTYPES = ("int8", "float16", "float32")
_KERNELS: dict = {}
_LOCK = threading.Lock()


def _kernel(bits: int, group_size: int, lut_dtype: str, m: int):
    """A compiled LUT-GEMM kernel with `lut_dtype` tables, one per (bits, group, dtype, M-blocking)."""
    import lutc
    from lutc.kernels import lut_gemm
    mb = 1 if m < 4 else 2
    key = (bits, group_size, lut_dtype, mb)
    k = _KERNELS.get(key)
    if k is None:
        with _LOCK:
            k = _KERNELS.get(key)
            if k is None:
                k = _KERNELS[key] = lutc.compile(lut_gemm.schedule(bits=bits, group_size=group_size,
                                                                   lut_dtype=lut_dtype, mb=mb))
    return k


class LutLinear(torch.nn.Module):
    """y = x @ W_hat^T (+ bias) through lutc's native LUT-GEMM kernels, W_hat never materialized.

    lut_dtype="int8" calls lutc.ops.lut_gemm (its tuned/default schedule); "float16"/"float32"
    compile lut_gemm schedules with tables of that precision.
    """

    def __init__(self, qt: QuantizedTensor, bias: bool = False, lut_dtype: str = "int8", threads=None):
        super().__init__()
        if lut_dtype not in LUT_DTYPES:
            raise ValueError(f"lut_dtype: expected one of {LUT_DTYPES}, got {lut_dtype!r}")
        self.qt, self.lut_dtype, self.threads = qt, lut_dtype, threads
        self.in_features, self.out_features = qt.K, qt.N
        self.bias = torch.nn.Parameter(torch.empty(qt.N, device="meta"), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        if self.lut_dtype == "int8":
            import lutc.ops
            y = lutc.ops.lut_gemm(x2, self.qt, threads=self.threads)
        else:
            y = _kernel(self.qt.bits, self.qt.group_size, self.lut_dtype, x2.shape[0])(x2, self.qt,
                                                                                       threads=self.threads)
        y = torch.as_tensor(y)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.qt.bits}, "
                f"group_size={self.qt.group_size}, lut_dtype={self.lut_dtype}")


def _set_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def hf_config(config: dict):
    """An HF PretrainedConfig from a QuantizedModel's config dict."""
    from transformers import AutoConfig
    cfg = dict(config)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def build_torch_model(qm: QuantizedModel, mode: str = "fake", lut_dtype: str = "int8", threads=None):
    """An HF causal LM (eval mode) whose linears are fake-quant float32 (mode="fake", one float32
    copy of every layer) or LutLinear (mode="lut", no float32 weights); other tensors shared with qm."""
    from transformers import AutoModelForCausalLM
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    config = hf_config(qm.config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    for name, qt in qm.linears.items():
        old = model.get_submodule(name)
        has_bias = getattr(old, "bias", None) is not None
        if mode == "fake":
            new = torch.nn.Linear(qt.K, qt.N, bias=has_bias, device="meta")
            new.weight = torch.nn.Parameter(torch.from_numpy(qt.dequantize()), requires_grad=False)
        else:
            new = LutLinear(qt, bias=has_bias, lut_dtype=lut_dtype, threads=threads)
        _set_module(model, name, new)
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in qm.tensors.items()}
    model.load_state_dict(state, strict=False, assign=True)
    rot = model.model.rotary_emb
    model.model.rotary_emb = type(rot)(config=model.config)
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if missing:
        raise ValueError(f"QuantizedModel: no data for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
