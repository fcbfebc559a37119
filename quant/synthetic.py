"""Synthetic LLaMA-shaped models on disk (random weights, F16/BF16/F32 safetensors), written tensor by
tensor so that a model larger than RAM can be made: the streaming quantization's test subject."""

from __future__ import annotations

import json
import os

import torch

__all__ = ["write_synthetic_llama", "LLAMA2_7B"]

LLAMA2_7B = dict(hidden=4096, inter=11008, layers=32, heads=32, kv_heads=32, vocab=32000)
_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
_CHUNK = 1 << 24  # elements generated at once


def _shapes(hidden, inter, layers, heads, kv_heads, vocab, tied):
    kv = hidden // heads * kv_heads
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.k_proj.weight", (kv, hidden)),
                (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.o_proj.weight", (hidden, hidden)),
                (p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
                (p + "mlp.down_proj.weight", (hidden, inter)), (p + "input_layernorm.weight", (hidden,)),
                (p + "post_attention_layernorm.weight", (hidden,))]
    out.append(("model.norm.weight", (hidden,)))
    if not tied:
        out.append(("lm_head.weight", (vocab, hidden)))
    return out


def write_synthetic_llama(path, hidden=256, inter=688, layers=4, heads=4, kv_heads=4, vocab=512,
                          dtype: str = "F16", tied: bool = False, std: float = 0.02, seed: int = 0) -> int:
    """Write a random LLaMA model (config.json + model.safetensors) into the directory `path`.

    Weights are N(0, std) (norm weights 1), generated and written in chunks of 16M elements, so
    memory stays small whatever the model's size. Returns the safetensors file's size in bytes.
    """
    from transformers import LlamaConfig
    os.makedirs(path, exist_ok=True)
    LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                tie_word_embeddings=tied, torch_dtype={"F16": "float16", "BF16": "bfloat16"}.get(dtype, "float32"),
                ).to_json_file(os.path.join(path, "config.json"))
    tdt = _DTYPES[dtype]
    size = torch.empty((), dtype=tdt).element_size()
    header, off = {}, 0
    shapes = _shapes(hidden, inter, layers, heads, kv_heads, vocab, tied)
    for name, shape in shapes:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n * size]}
        off += n * size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    gen = torch.Generator().manual_seed(seed)
    file = os.path.join(path, "model.safetensors")
    with open(file, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for name, shape in shapes:
            n = header[name]["data_offsets"][1] // size - header[name]["data_offsets"][0] // size
            if len(shape) == 1:
                f.write(torch.ones(n, dtype=tdt).view(torch.uint8).numpy().tobytes())
                continue
            for c0 in range(0, n, _CHUNK):
                chunk = torch.randn(min(_CHUNK, n - c0), generator=gen).mul_(std).to(tdt)
                f.write(chunk.view(torch.uint8).numpy().tobytes())
    return os.path.getsize(file)
