"""lutc runtime: run quantized LLaMA/Mistral/Qwen/Phi-3/Gemma models with lutc kernels (lean decoder, batch
scheduler, generation, OpenAI-compatible server, torch layers)."""
from .config import DecoderConfig, UnsupportedModelError
from .decoder import LeanDecoder
from .generate import GenerationResult, generate
from .models import load_decoder, load_quantized, load_tokenizer
from .sampling import Sampler, SamplingParams
from .scheduler import BatchScheduler


def load(model_or_dir, threads=None, n_ctx=None, bits=4, group_size=128, method="hlq", lut_dtype=None, knobs=None):
    """(LeanDecoder, tokenizer) for a quantized checkpoint folder or a bundled model name (pack-cached).
    knobs: Schedule knob overrides for every linear (e.g. {"path": "lut"}, the path `lutc serve` runs)."""
    return load_decoder(model_or_dir, threads=threads, n_ctx=n_ctx, bits=bits, group_size=group_size,
                        method=method, lut_dtype=lut_dtype, knobs=knobs)


def __getattr__(name):   # torch is imported only when the torch integration is used
    if name in ("LUTLinear", "replace_linears", "build_lut_model"):
        from . import torch_ops
        return getattr(torch_ops, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


__all__ = ["DecoderConfig", "UnsupportedModelError", "LeanDecoder", "GenerationResult", "generate",
           "BatchScheduler", "load", "load_decoder", "load_quantized", "load_tokenizer", "Sampler", "SamplingParams", "LUTLinear",
           "replace_linears", "build_lut_model"]
