"""A runnable torch HF model from a QuantizedModel: fake-quant (dequantized float32) linears,
or linears made by a caller's factory (the runtime's LUT-kernel layers)."""

from __future__ import annotations

import numpy as np
import torch

from .model import QuantizedModel

__all__ = ["build_torch_model", "fake_quant_linear"]


def fake_quant_linear(name: str, qt, has_bias: bool) -> torch.nn.Module:
    """nn.Linear holding qt.dequantize() in float32 (the bias, if any, is loaded with the tensors)."""
    new = torch.nn.Linear(qt.K, qt.N, bias=has_bias, device="meta")
    new.weight = torch.nn.Parameter(torch.from_numpy(qt.dequantize()), requires_grad=False)
    return new


def _set_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def hf_config(config: dict):
    """An HF PretrainedConfig from a QuantizedModel's config dict."""
    from transformers import AutoConfig
    cfg = dict(config)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def build_torch_model(qm: QuantizedModel, linear=fake_quant_linear):
    """An HF causal LM (eval mode) whose quantized linears are `linear(name, qt, has_bias)` modules
    (default: fake-quant float32, one float copy per layer); other tensors are shared with qm."""
    from transformers import AutoModelForCausalLM
    config = hf_config(qm.config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    for name, qt in qm.linears.items():
        old = model.get_submodule(name)
        _set_module(model, name, linear(name, qt, getattr(old, "bias", None) is not None))
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
