"""The per-layer weights of a decoder, loaded for the model's family: four fused LUT-GEMM matrices
(qkv, o, gate_up, down) plus the float tensors the glue kernels read (norms, biases, q/k norms)."""
from __future__ import annotations

import numpy as np

from .config import FUSED, DecoderConfig
from .families import layer_names, tensor_roles
from .linear import LinearWeights, concat_rows


class Layer:
    __slots__ = ("qkv", "o", "gu", "down", "t", "ln1", "ln2", "bias", "qn", "kn", "post_attn", "post_mlp",
                 "window", "local", "k_cache", "v_cache")


def roles(c: DecoderConfig) -> tuple:
    return tensor_roles(c.family, dict(qk_norm=c.qk_norm))


def norm_weight(w: np.ndarray, c: DecoderConfig) -> np.ndarray:
    """The weight an RMSNorm kernel multiplies by: w, or 1 + w for Gemma (computed in float32)."""
    return (w.astype(np.float32) + np.float32(1.0)) if c.norm_plus_one else w


def load_layers(qm, c: DecoderConfig, prepacked, max_m: int, lut_dtype, slots: int, n_ctx: int,
                knobs: dict | None = None) -> list:
    layers = []
    for i in range(c.num_layers):
        n, L = layer_names(i, c.family), Layer()
        if prepacked is not None:
            L.qkv, L.o, L.gu, L.down = (LinearWeights(prepacked[f"{i}.{k}"], max_m, lut_dtype, f"{i}.{k}", knobs)
                                        for k in FUSED)
        else:
            lin = qm.linears
            if c.family == "phi3":
                L.qkv = LinearWeights(lin[n["qkv"]], max_m, lut_dtype, n["qkv"], knobs)
                L.gu = LinearWeights(lin[n["gate_up"]], max_m, lut_dtype, n["gate_up"], knobs)
            else:
                L.qkv = LinearWeights(concat_rows([lin[n["q"]], lin[n["k"]], lin[n["v"]]]), max_m, lut_dtype,
                                      n["q"] + "kv", knobs)
                L.gu = LinearWeights(concat_rows([lin[n["gate"]], lin[n["up"]]]), max_m, lut_dtype,
                                     n["gate"] + "+up", knobs)
            L.o = LinearWeights(lin[n["o"]], max_m, lut_dtype, n["o"], knobs)
            L.down = LinearWeights(lin[n["down"]], max_m, lut_dtype, n["down"], knobs)
        L.t = {n[r]: qm.tensors[n[r]] for r in roles(c)}          # as stored (what the pack cache saves)
        get = lambda r: L.t[n[r]]  # noqa: E731
        L.ln1, L.ln2 = norm_weight(get("ln1"), c), norm_weight(get("ln2"), c)
        L.bias = (np.concatenate([get("q_bias"), get("k_bias"), get("v_bias")]).astype(np.float32)
                  if c.qkv_bias else None)
        one = np.ones(c.head_dim, np.float32)
        L.qn = norm_weight(get("q_norm"), c) if c.qk_norm else one
        L.kn = norm_weight(get("k_norm"), c) if c.qk_norm else one
        L.post_attn = norm_weight(get("post_attn"), c) if c.family == "gemma" else None
        L.post_mlp = norm_weight(get("post_mlp"), c) if c.family == "gemma" else None
        L.window = c.layer_windows[i] if c.layer_windows else 0
        L.local = bool(c.local_rope_theta) and L.window > 0          # Gemma-3 sliding layers: own RoPE base
        L.k_cache = np.zeros((slots, c.num_kv_heads, n_ctx, c.head_dim), np.float32)
        L.v_cache = np.zeros((slots, c.num_kv_heads, n_ctx, c.head_dim), np.float32)
        layers.append(L)
    return layers


def expected_shapes(c: DecoderConfig) -> tuple[dict, dict]:
    """({linear role: (N, K)}, {tensor role: shape}) of one layer of this family."""
    H, F, q, kv, d = c.hidden_size, c.intermediate_size, c.q_size, c.kv_size, c.head_dim
    if c.family == "phi3":
        lin = dict(qkv=(q + 2 * kv, H), gate_up=(2 * F, H))
    else:
        lin = dict(q=(q, H), k=(kv, H), v=(kv, H), gate=(F, H), up=(F, H))
    lin.update(o=(H, q), down=(H, F))
    shapes = dict(ln1=(H,), ln2=(H,), q_bias=(q,), k_bias=(kv,), v_bias=(kv,), q_norm=(d,), k_norm=(d,),
                  post_attn=(H,), post_mlp=(H,))
    return lin, {r: shapes[r] for r in roles(c)}
