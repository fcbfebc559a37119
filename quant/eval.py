"""Perplexity with a sliding window: float models and quantized models (fake-quant by default;
the runtime passes its LUT-kernel layers as `linear`)."""

from __future__ import annotations

import math
import os
import sys
import time

import torch

from .calib import eval_ids
from .model import QuantizedModel
from .torch_model import build_torch_model, fake_quant_linear

__all__ = ["perplexity", "evaluate", "sliding_nll", "resolve_model"]


def sliding_nll(model, ids: torch.Tensor, window: int = 1024, stride: int = 512, progress: bool = False):
    """(sum of token NLLs, number of scored tokens) of a causal LM over 1-D ids.

    Windows of `window` tokens advance by `stride`; each scores only tokens no earlier window
    scored, with at least window - stride tokens of context (except near the start). With
    stride < window every token after the first is scored exactly once; with stride == window
    (non-overlapping windows, as GPTQ evaluates) each window's first token is not scored.
    lm_head runs only on scored positions.
    """
    if not 1 <= stride <= window:
        raise ValueError(f"stride: expected 1 <= stride <= window ({window}), got {stride}")
    ids = torch.as_tensor(ids).reshape(-1).to(torch.int64)
    total = ids.numel()
    if total < 2:
        raise ValueError(f"ids: need at least 2 tokens, got {total}")
    nll, count, prev_end, t0 = 0.0, 0, 0, time.perf_counter()
    body, head = model.get_decoder(), model.get_output_embeddings()
    with torch.inference_mode():
        for begin in range(0, total, stride):
            end = min(begin + window, total)
            lo = max(prev_end, begin + 1)  # first target index this window scores
            if lo < end:
                hidden = body(input_ids=ids[None, begin:end]).last_hidden_state[0, lo - begin - 1:end - begin - 1]
                logits = head(hidden).float()
                nll += float(torch.nn.functional.cross_entropy(logits, ids[lo:end], reduction="sum"))
                count += end - lo
            prev_end = end
            if progress:
                print(f"[eval] {end}/{total} tokens, ppl so far {math.exp(nll / max(count, 1)):.3f} "
                      f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
            if end == total:
                break
    return nll, count


def resolve_model(model, linear=None, kind: str | None = None):
    """(torch causal LM, tokenizer or None, kind) for an HF model, a QuantizedModel, a checkpoint
    directory, or a source model name/path ("smollm2-135m", .gguf, HF directory: float32).
    A QuantizedModel's linears are `linear(name, qt, has_bias)` modules (default: fake-quant)."""
    if isinstance(model, torch.nn.Module):
        return model.eval(), None, "float32 (given model)"
    if isinstance(model, (str, os.PathLike)):
        from .checkpoint import MANIFEST, load_checkpoint
        if os.path.isfile(os.path.join(os.fspath(model), MANIFEST)):
            model = load_checkpoint(model)
        else:
            from .source import load_source_model
            m, tok = load_source_model(model)
            return m, tok, "float32"
    if isinstance(model, QuantizedModel):
        tok = None
        if model.tokenizer_dir is not None:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(model.tokenizer_dir)
        if linear is None:
            linear, kind = fake_quant_linear, kind or "fake-quant"
        return build_torch_model(model, linear), tok, kind or getattr(linear, "__name__", "custom linears")
    raise TypeError(f"model: expected an HF model, QuantizedModel, checkpoint dir or model name, "
                    f"got {type(model).__name__}")


def evaluate(model, text=None, *, tokens=None, tokenizer=None, linear=None, kind: str | None = None,
             window: int = 1024, stride: int | None = None, max_tokens: int | None = 8192,
             progress: bool = False) -> dict:
    """Perplexity and details: {"ppl", "nll", "tokens", "source", "kind", "window", "stride", "seconds"}.

    stride defaults to window // 2. Text: `tokens` (1-D ids) if given, else the file `text`, else the built-in corpus' held-out
    part; the first max_tokens tokens are used.
    """
    t0 = time.perf_counter()
    stride = stride or max(1, window // 2)
    lm, tok, kind = resolve_model(model, linear, kind)
    tok = tokenizer or tok
    if tokens is None:
        if tok is None:
            raise ValueError("evaluate: no tokenizer for this model; pass tokenizer= or tokens=")
        tokens, source = eval_ids(tok, text, max_tokens)
    else:
        tokens, source = torch.as_tensor(tokens).reshape(-1)[:max_tokens], "token ids"
    nll, count = sliding_nll(lm, tokens, window, stride, progress)
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count, "source": source, "kind": kind,
            "window": window, "stride": stride, "seconds": round(time.perf_counter() - t0, 2)}


def perplexity(model, text=None, **kwargs) -> float:
    """Perplexity of `model` (see evaluate for the accepted models, text and options)."""
    return evaluate(model, text, **kwargs)["ppl"]
