"""Synthetic LLaMA-shaped models on disk (random weights, F16/BF16/F32 safetensors), written tensor by
tensor so that a model larger than RAM can be made: the streaming quantization's test subject."""

from __future__ import annotations

import json
import os

import torch

__all__ = ["write_synthetic_llama", "write_synthetic_tokenizer", "write_gguf_from_dir", "add_smollm2_tokenizer",
           "LLAMA2_7B"]

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
                          dtype: str = "F16", tied: bool = False, std: float = 0.02, seed: int = 0,
                          rms_norm_eps: float = 1e-6) -> int:
    """Write a random LLaMA model (config.json + model.safetensors) into the directory `path`.

    Weights are N(0, std) (norm weights 1), generated and written in chunks of 16M elements, so
    memory stays small whatever the model's size. Returns the safetensors file's size in bytes.
    """
    from transformers import LlamaConfig
    os.makedirs(path, exist_ok=True)
    LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                tie_word_embeddings=tied, rms_norm_eps=rms_norm_eps,
                torch_dtype={"F16": "float16", "BF16": "bfloat16"}.get(dtype, "float32"),
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


def write_synthetic_tokenizer(path, vocab: int) -> None:
    """A byte-level BPE tokenizer with `vocab` tokens in the directory `path` (tokenizer.json and
    tokenizer_config.json): SmolLM2's, cut to its first `vocab` ids, keeping the merges whose two
    parts and result all survive the cut (so it still tokenizes any text)."""
    import shutil
    import tempfile
    from transformers import AutoTokenizer
    from .source import smollm2_gguf_path
    folder, name = os.path.split(smollm2_gguf_path())
    tmp = tempfile.mkdtemp(prefix=".tok-")
    try:
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
            t = json.load(f)
        keep = {tok: i for tok, i in t["model"]["vocab"].items() if i < vocab}
        t["model"]["vocab"] = keep
        merges = [m if isinstance(m, list) else m.split(" ", 1) for m in t["model"]["merges"]]
        t["model"]["merges"] = [m for m in merges if m[0] in keep and m[1] in keep and m[0] + m[1] in keep]
        t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < vocab]
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(t, f, ensure_ascii=False)
        shutil.copy(os.path.join(tmp, "tokenizer_config.json"), os.path.join(path, "tokenizer_config.json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _permute_qk(w, heads: int):
    """HF -> GGUF row order of q/k (convert_hf_to_gguf's LlamaModel.permute: rotary pairs interleaved)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf_from_dir(hf_dir, out) -> int:
    """The F16 GGUF (llama.cpp's "llama" architecture) of a synthetic model directory written by
    write_synthetic_llama + write_synthetic_tokenizer: the same weights (q/k rows permuted as
    llama.cpp's converter does), the same tokenizer, written tensor by tensor (memory stays at one
    tensor) to out + ".tmp", then renamed. Returns the file's size in bytes."""
    import gguf
    import numpy as np
    from .source import SafetensorsFile
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(hf_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    st = SafetensorsFile(os.path.join(hf_dir, "model.safetensors"))
    H, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    w = gguf.GGUFWriter(os.fspath(out) + ".tmp", "llama")
    w.add_name("synthetic-llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(H)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_rope_dimension_count(H // heads)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv_: kv_[1])
    special = {a["id"] for a in tok["added_tokens"] if a.get("special")}
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i in special else 1 for _, i in vocab])
    w.add_token_merges([f"{a} {b}" for a, b in tok["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = [("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight"),
             ("lm_head.weight", "output.weight")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [(p + "self_attn.q_proj.weight", f"blk.{i}.attn_q.weight"),
                  (p + "self_attn.k_proj.weight", f"blk.{i}.attn_k.weight"),
                  (p + "self_attn.v_proj.weight", f"blk.{i}.attn_v.weight"),
                  (p + "self_attn.o_proj.weight", f"blk.{i}.attn_output.weight"),
                  (p + "mlp.gate_proj.weight", f"blk.{i}.ffn_gate.weight"),
                  (p + "mlp.up_proj.weight", f"blk.{i}.ffn_up.weight"),
                  (p + "mlp.down_proj.weight", f"blk.{i}.ffn_down.weight"),
                  (p + "input_layernorm.weight", f"blk.{i}.attn_norm.weight"),
                  (p + "post_attention_layernorm.weight", f"blk.{i}.ffn_norm.weight")]
    names = [(s, g) for s, g in names if s in st.keys()]

    def array(src):
        t = st.get_tensor(src)
        if t.dim() == 1:
            return t.to(torch.float32).numpy()
        a = t.to(torch.float16).numpy()
        if src.endswith("q_proj.weight"):
            a = np.ascontiguousarray(_permute_qk(a, heads))
        elif src.endswith("k_proj.weight"):
            a = np.ascontiguousarray(_permute_qk(a, kv))
        return a

    for src, dst in names:
        e = st._entries[src]
        dt = np.float32 if len(e["shape"]) == 1 else np.float16
        n = 1
        for d in e["shape"]:
            n *= d
        w.add_tensor_info(dst, e["shape"], np.dtype(dt), n * np.dtype(dt).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for src, _ in names:
        w.write_tensor_data(array(src))
    w.close()
    os.replace(os.fspath(out) + ".tmp", out)
    return os.path.getsize(out)


def add_smollm2_tokenizer(w) -> None:
    """Write the bundled SmolLM2 GGUF's tokenizer (gpt2-style BPE, 49152 tokens, bos 1, eos 2) into the
    gguf.GGUFWriter `w`, for random-weight GGUFs with a real vocabulary."""
    import gguf

    from .source import smollm2_gguf_path
    r = gguf.GGUFReader(smollm2_gguf_path())
    strs = lambda f: [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]  # noqa: E731
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(strs(r.fields["tokenizer.ggml.pre"])[0])
    w.add_token_list(strs(r.fields["tokenizer.ggml.tokens"]))
    tt = r.fields["tokenizer.ggml.token_type"]
    w.add_token_types([int(tt.parts[i][0]) for i in tt.data])
    w.add_token_merges(strs(r.fields["tokenizer.ggml.merges"]))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
