"""Calibration and evaluation text: the built-in corpus (CPython's pydoc topics), text files, token windows."""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["builtin_corpus", "corpus_split", "read_text", "tokenize", "calibration_ids", "eval_ids",
           "BUILTIN", "HOLDOUT_FRACTION"]

BUILTIN = "builtin:pydoc-topics"
HOLDOUT_FRACTION = 0.15  # the built-in corpus' last 15% of characters is held out for evaluation


def builtin_corpus() -> str:
    """CPython's pydoc_data.topics (ships with Python, no download): all topics, sorted by name."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def corpus_split(text: str) -> tuple[str, str]:
    """(calibration part, held-out evaluation part) of the built-in corpus, split at a line break."""
    cut = int(len(text) * (1 - HOLDOUT_FRACTION))
    nl = text.find("\n", cut)
    cut = nl + 1 if nl >= 0 else cut
    return text[:cut], text[cut:]


def read_text(path) -> str:
    """A UTF-8 text file's contents; ValueError naming the file if it is missing, unreadable or empty."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"text file {path!r}: cannot read it as UTF-8 text ({e})") from None
    if not text.strip():
        raise ValueError(f"text file {path!r}: it is empty")
    return text


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """1-D int64 token ids of `text` (no special tokens), encoded in chunks of lines to bound memory."""
    ids = []
    chunk, size = [], 0
    for line in text.splitlines(keepends=True):
        chunk.append(line)
        size += len(line)
        if size >= 1 << 16:
            ids.extend(tokenizer("".join(chunk), add_special_tokens=False)["input_ids"])
            chunk, size = [], 0
    if chunk:
        ids.extend(tokenizer("".join(chunk), add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.int64)


def calibration_ids(tokenizer, calib, nsamples: int, seqlen: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(nsamples, seqlen) int64 calibration windows and a description of their source.

    calib: None (the built-in corpus without its held-out part), a path to a UTF-8 text file,
    or ready token ids of shape (nsamples, seqlen). Windows start at seeded random offsets.
    """
    if calib is not None and not isinstance(calib, (str, os.PathLike)):
        ids = torch.as_tensor(np.asarray(calib)).to(torch.int64)
        if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 2:
            raise ValueError(f"calib: expected token ids of shape (nsamples, seqlen >= 2), got {tuple(ids.shape)}")
        return ids, "token ids"
    if calib is None:
        text, source = corpus_split(builtin_corpus())[0], BUILTIN
    else:
        text, source = read_text(calib), os.fspath(calib)
    tokens = tokenize(tokenizer, text)
    if tokens.numel() < seqlen + 1:
        raise ValueError(f"calibration text {source!r}: has {tokens.numel()} tokens, needs at least "
                         f"seqlen + 1 = {seqlen + 1}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([tokens[s:s + seqlen] for s in starts.tolist()]), source


def eval_ids(tokenizer, text_path=None, max_tokens: int | None = 8192) -> tuple[torch.Tensor, str]:
    """1-D int64 tokens to evaluate and their source: a text file, else the built-in corpus' held-out part.

    The first `max_tokens` tokens are kept (None: all).
    """
    if text_path is None:
        text, source = corpus_split(builtin_corpus())[1], BUILTIN + " (held-out 15%)"
    else:
        text, source = read_text(text_path), os.fspath(text_path)
    tokens = tokenize(tokenizer, text)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if tokens.numel() < 2:
        raise ValueError(f"evaluation text {source!r}: needs at least 2 tokens, got {tokens.numel()}")
    return tokens, source
