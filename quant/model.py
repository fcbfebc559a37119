"""QuantizedModel: a quantized LLaMA-family model in memory (what checkpoints hold and runtimes load)."""
from __future__ import annotations

import dataclasses

import numpy as np

from .tensor import QuantizedTensor


@dataclasses.dataclass(eq=False)
class QuantizedModel:
    """A Hugging Face LLaMA-family model with its linear layers quantized.

    - config: the HF config as a dict (LlamaConfig.to_dict()).
    - linears: QuantizedTensor per HF module name, e.g. "model.layers.0.self_attn.q_proj",
      "model.layers.0.mlp.down_proj", "lm_head" (lm_head is quantized even when tied).
    - tensors: float32 non-quantized tensors by HF parameter name, e.g.
      "model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight".
    - tokenizer_dir: a folder AutoTokenizer.from_pretrained can load, or None.
    - meta: method, bits, group_size, source model, lutc version, timings...
    """

    config: dict
    linears: dict
    tensors: dict
    tokenizer_dir: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name, qt in self.linears.items():
            if not isinstance(qt, QuantizedTensor):
                raise ValueError(f"linears[{name!r}]: expected a QuantizedTensor, got {type(qt).__name__}")
        for name, t in self.tensors.items():
            if not isinstance(t, np.ndarray) or t.dtype != np.float32:
                raise ValueError(f"tensors[{name!r}]: expected a float32 numpy array, "
                                 f"got {getattr(t, 'dtype', type(t).__name__)}")

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def __repr__(self) -> str:
        arch = (self.config.get("architectures") or ["?"])[0]
        return (f"QuantizedModel({arch}, layers={self.config.get('num_hidden_layers')}, "
                f"linears={len(self.linears)}, meta={self.meta})")
