"""DecoderConfig: the LLaMA-family hyperparameters the runtime needs, validated from an HF config dict."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .families import MODEL_TYPES, UnsupportedModelError, family_options, layer_names, rope_params  # noqa: F401

SUPPORTED_MODEL_TYPES = tuple(MODEL_TYPES)
ROPE_TYPES = ("default", "linear", "llama3")


FUSED = ("qkv", "o", "gate_up", "down")     # the four matrices of a layer, as the decoder runs them


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple
    family: str = "llama"                  # llama (also mistral), qwen2, qwen3, phi3, gemma
    layer_windows: tuple = ()              # per layer: attend to the last w positions only (0: all)
    qkv_bias: bool = False                 # Qwen2: biases on q, k, v
    qk_norm: bool = False                  # Qwen3, Gemma-3: RMSNorm of each q and k head before RoPE
    act: str = "silu"                      # MLP gate activation: silu or gelu_tanh (Gemma)
    norm_plus_one: bool = False            # Gemma: RMSNorm scales by (1 + w)
    embed_scale: float = 1.0               # Gemma: embeddings times sqrt(hidden)
    attn_softcap: float = 0.0              # Gemma-2: scores = cap * tanh(scores / cap)
    final_softcap: float = 0.0             # Gemma-2: logits = cap * tanh(logits / cap)
    query_scale: float | None = None       # attention scale (default 1/sqrt(head_dim))
    local_rope_theta: float | None = None  # Gemma-3: RoPE base of the sliding-window layers

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf(cls, cfg: dict) -> "DecoderConfig":
        """Validate an HF config dict (LlamaConfig.to_dict()); UnsupportedModelError says why not."""
        if not isinstance(cfg, dict):
            raise UnsupportedModelError(f"config: expected a dict, got {type(cfg).__name__}")
        mtype = cfg.get("model_type")
        if mtype not in SUPPORTED_MODEL_TYPES:       # family_options names refused features
            family_options(cfg, 0, 0, 0)
        need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in need if not cfg.get(k)]
        if missing:
            raise UnsupportedModelError(f"config is missing {', '.join(missing)}")
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv:
            raise UnsupportedModelError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
        if head_dim % 2:
            raise UnsupportedModelError(f"head_dim={head_dim} must be even for RoPE")
        rope = rope_params(cfg)
        theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in ROPE_TYPES:
            raise UnsupportedModelError(f"unsupported rope_type {rtype!r} (supported: {ROPE_TYPES})")
        if float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))) != 1.0:
            raise UnsupportedModelError("unsupported architecture: partial_rotary_factor != 1")
        n_layers = int(cfg["num_hidden_layers"])
        extra = family_options(cfg, n_layers, head_dim, int(cfg["hidden_size"]))
        eos = cfg.get("eos_token_id")
        eos = () if eos is None else tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
        return cls(vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
                   intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
                   num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
                   rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta,
                   rope_scaling=None if rtype == "default" else dict(rope, rope_type=rtype),
                   max_position_embeddings=int(cfg.get("max_position_embeddings") or 2048),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   bos_token_id=cfg.get("bos_token_id"), eos_token_ids=eos, **extra)

    def inv_freq(self, local: bool = False) -> np.ndarray:
        """RoPE inverse frequencies (head_dim/2,), float32, with the config's scaling applied
        (local=True: Gemma-3's sliding-window layers, own base, no scaling)."""
        d = self.head_dim
        theta = self.local_rope_theta if local else self.rope_theta
        inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
        sc = None if local else self.rope_scaling
        if sc is None:
            return inv.astype(np.float32)
        if sc["rope_type"] == "linear":
            return (inv / float(sc["factor"])).astype(np.float32)
        # llama3: long wavelengths divided by factor, short ones kept, smooth in between
        factor, lo, hi = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        out = np.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        mid = (1 - smooth) * out / factor + smooth * out
        is_mid = ~(wl < hi_wl) & ~(wl > lo_wl)
        return np.where(is_mid, mid, out).astype(np.float32)

    def rope_tables(self, n_ctx: int, local: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin (n_ctx, head_dim/2) float32, computed like transformers (float32 angles)."""
        ang = np.arange(n_ctx, dtype=np.float32)[:, None] * self.inv_freq(local)[None, :]
        return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
