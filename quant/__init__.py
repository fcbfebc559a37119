"""quant: float weights -> QuantizedTensor (b-bit codes, per-bit-plane fp16 scales, fp16 zeros)."""

from .api import quantize
from .model import QuantizedModel
from .tensor import QuantizedTensor, bitplanes

__all__ = ["QuantizedTensor", "QuantizedModel", "quantize", "bitplanes", "gptq_quantize", "HessianAccumulator",
           "quantize_model", "save_checkpoint", "load_checkpoint", "CheckpointError", "load_source_model",
           "perplexity", "evaluate", "build_torch_model"]

_LAZY = {  # torch / transformers stay unimported until one of these is used
    "gptq_quantize": "gptq", "HessianAccumulator": "gptq", "quantize_model": "model_quant",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "CheckpointError": "checkpoint",
    "load_source_model": "source", "perplexity": "eval", "evaluate": "eval", "build_torch_model": "torch_model",
}


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'quant' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"quant.{mod}"), name)
