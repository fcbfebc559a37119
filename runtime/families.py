"""Model families the decoder runs: per family, how an HF config maps to the decoder's features and
which HF tensors a layer has. Everything here is data; the decoder reads DecoderConfig's flags."""
from __future__ import annotations

import math


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture (or one of its features) is not one this runtime can run."""


# model_type -> (architectures accepted, family)
MODEL_TYPES = {
    "llama": (("LlamaForCausalLM",), "llama"),
    "mistral": (("MistralForCausalLM",), "llama"),
    "qwen2": (("Qwen2ForCausalLM",), "qwen2"),
    "qwen3": (("Qwen3ForCausalLM",), "qwen3"),
    "phi3": (("Phi3ForCausalLM",), "phi3"),
    "gemma2": (("Gemma2ForCausalLM",), "gemma"),
    "gemma3_text": (("Gemma3ForCausalLM",), "gemma"),
}
REFUSED = {
    "gemma3": "the multimodal Gemma-3 (Gemma3ForConditionalGeneration); use a text-only gemma3_text checkpoint",
    "qwen2_moe": "mixture-of-experts MLP", "qwen3_moe": "mixture-of-experts MLP", "mixtral": "mixture-of-experts MLP",
    "phimoe": "mixture-of-experts MLP", "gemma": "Gemma-1 (GeGLU without the Gemma-2 norms) is not wired up",
    "phi": "Phi-1/2 (parallel attention, LayerNorm, partial RoPE)",
}


def layer_names(i: int, family: str = "llama") -> dict:
    """The HF tensor names of layer i by role. Linears (q, k, v or qkv; o; gate, up or gate_up; down)
    are module names; the rest are tensor names. Optional roles exist only for their families."""
    p = f"model.layers.{i}."
    a = p + "self_attn."
    n = dict(q=a + "q_proj", k=a + "k_proj", v=a + "v_proj", o=a + "o_proj", gate=p + "mlp.gate_proj",
             up=p + "mlp.up_proj", down=p + "mlp.down_proj", ln1=p + "input_layernorm.weight",
             ln2=p + "post_attention_layernorm.weight")
    if family == "phi3":
        n.update(qkv=a + "qkv_proj", gate_up=p + "mlp.gate_up_proj")
    if family == "qwen2":
        n.update(q_bias=a + "q_proj.bias", k_bias=a + "k_proj.bias", v_bias=a + "v_proj.bias")
    if family in ("qwen3", "gemma"):
        n.update(q_norm=a + "q_norm.weight", k_norm=a + "k_norm.weight")
    if family == "gemma":      # sandwich norms: ln2 is the pre-MLP norm; attention/MLP outputs are normed too
        n.update(ln2=p + "pre_feedforward_layernorm.weight", post_attn=p + "post_attention_layernorm.weight",
                 post_mlp=p + "post_feedforward_layernorm.weight")
    return n


def linear_roles(family: str) -> tuple:
    return ("qkv", "o", "gate_up", "down") if family == "phi3" else ("q", "k", "v", "o", "gate", "up", "down")


def tensor_roles(family: str, cfg_flags: dict) -> tuple:
    roles = ["ln1", "ln2"]
    if family == "qwen2":
        roles += ["q_bias", "k_bias", "v_bias"]
    if cfg_flags.get("qk_norm"):
        roles += ["q_norm", "k_norm"]
    if family == "gemma":
        roles += ["post_attn", "post_mlp"]
    return tuple(roles)


def family_options(cfg: dict, num_layers: int, head_dim: int, hidden: int) -> dict:
    """The DecoderConfig fields a family sets beyond the LLaMA ones (UnsupportedModelError if a
    feature is not supported)."""
    mtype = cfg.get("model_type")
    if mtype in REFUSED:
        raise UnsupportedModelError(f"unsupported architecture: model_type={mtype!r}: {REFUSED[mtype]}")
    if mtype not in MODEL_TYPES:
        raise UnsupportedModelError(f"unsupported architecture: model_type={mtype!r}; supported: "
                                    f"{', '.join(MODEL_TYPES)}")
    archs, family = MODEL_TYPES[mtype]
    bad = [a for a in cfg.get("architectures") or [] if a not in archs]
    if bad:
        raise UnsupportedModelError(f"unsupported architecture: {bad[0]} (model_type {mtype!r} runs {archs})")
    out = dict(family=family)
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
    if family == "gemma":
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise UnsupportedModelError(f"unsupported architecture: Gemma hidden_activation={act!r}")
        out.update(act="gelu_tanh", norm_plus_one=True, embed_scale=math.sqrt(hidden),
                   attn_softcap=float(cfg.get("attn_logit_softcapping") or 0.0),
                   final_softcap=float(cfg.get("final_logit_softcapping") or 0.0),
                   query_scale=float(cfg.get("query_pre_attn_scalar") or head_dim) ** -0.5,
                   qk_norm=mtype == "gemma3_text")
    elif act != "silu":
        raise UnsupportedModelError(f"unsupported architecture: hidden_act={act!r} (expected 'silu')")
    if family == "qwen3":
        out.update(qk_norm=True)
    if cfg.get("mlp_bias"):
        raise UnsupportedModelError("unsupported architecture: mlp_bias=True (MLP biases)")
    if cfg.get("attention_bias") and family != "qwen2":
        raise UnsupportedModelError("unsupported architecture: attention_bias=True (attention biases)")
    if family == "qwen2":
        out.update(qkv_bias=True)
        if cfg.get("use_sliding_window"):
            raise UnsupportedModelError("unsupported architecture: Qwen2 use_sliding_window=True")
    windows = [0] * num_layers
    sw = cfg.get("sliding_window")
    if mtype == "mistral" and sw:
        windows = [int(sw)] * num_layers
    elif family == "phi3" and sw:
        windows = [int(sw)] * num_layers
    elif family == "gemma" and sw:
        types = cfg.get("layer_types")
        if not types:
            types = ["sliding_attention" if (i + 1) % int(cfg.get("sliding_window_pattern") or 2) else
                     "full_attention" for i in range(num_layers)]
        windows = [int(sw) if t == "sliding_attention" else 0 for t in types[:num_layers]]
    elif family in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
        raise UnsupportedModelError("unsupported architecture: Qwen use_sliding_window=True")
    out["layer_windows"] = tuple(windows)
    if mtype == "gemma3_text":
        rp = cfg.get("rope_parameters") or {}
        local = rp.get("sliding_attention") if isinstance(rp.get("sliding_attention"), dict) else None
        out["local_rope_theta"] = float(local.get("rope_theta") if local else cfg.get("rope_local_base_freq", 10000.0))
    return out


def rope_params(cfg: dict) -> dict:
    """The global RoPE parameters of a config (Gemma-3 nests them per layer type)."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if isinstance(rope.get("full_attention"), dict):
        rope = dict(rope["full_attention"])
    return rope
