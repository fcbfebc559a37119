"""Calibration and evaluation text: the built-in corpus (CPython's pydoc topics), text files, token windows."""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["builtin_corpus", "corpus_split", "read_text", "tokenize", "calibration_ids", "eval_ids",
           "mix_corpus", "BUILTIN", "MIX", "HOLDOUT_FRACTION"]

BUILTIN = "builtin:pydoc-topics"
# several CPython-shipped English texts, windows taken round-robin from each (mix_corpus)
MIX = "builtin:mix"
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


class _HTMLText:
    """The text of an HTML document: tag contents, a line break after each block element."""
    _BLOCK = {"p", "dt", "dd", "li", "div", "pre", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "title"}

    def __init__(self, source: str):
        import html.parser
        out, skip = [], [0]

        class P(html.parser.HTMLParser):
            def handle_starttag(self, tag, attrs):
                skip[0] += tag in ("script", "style")

            def handle_endtag(self, tag):
                skip[0] -= tag in ("script", "style")
                if tag in _HTMLText._BLOCK:
                    out.append("\n")

            def handle_data(self, data):
                if not skip[0]:
                    out.append(data)

        P().feed(source)
        self.text = "".join(out)


def _module_docstrings() -> str:
    """The module docstrings of CPython's top-level stdlib modules and packages, sorted by file name
    (read with ast, nothing imported)."""
    import ast
    import glob
    import sysconfig
    std = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(std, "*.py")) + glob.glob(os.path.join(std, "*", "__init__.py")))
    docs = []
    for f in files:
        if os.sep + "test" + os.sep in f or os.sep + "idlelib" + os.sep in f:
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                doc = ast.get_docstring(ast.parse(fh.read()))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc:
            docs.append(doc)
    return "\n\n".join(docs)


def mix_corpus() -> list[tuple[str, str]]:
    """(name, text) of the calibration mix (MIX): three CPython-shipped English texts of different kinds,
    none of them an evaluation or knob-selection text of docs/quantization.md: the pydoc corpus without
    its held-out 15% (language reference), IDLE's manual (idlelib/help.html, tags stripped; a user
    manual) and the module docstrings of the stdlib (library overviews)."""
    import idlelib
    with open(os.path.join(os.path.dirname(idlelib.__file__), "help.html"), encoding="utf-8") as f:
        manual = _HTMLText(f.read()).text
    return [("pydoc-topics (first 85%)", corpus_split(builtin_corpus())[0]), ("idlelib/help.html", manual),
            ("stdlib module docstrings", _module_docstrings())]


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

    calib: None (the built-in corpus without its held-out part), MIX (several texts, mix_corpus: window j
    comes from text j mod 3, so every prefix of the windows is balanced), a path to a UTF-8 text file,
    or ready token ids of shape (nsamples, seqlen). Windows start at seeded random offsets.
    """
    if calib is not None and not isinstance(calib, (str, os.PathLike)):
        ids = torch.as_tensor(np.asarray(calib)).to(torch.int64)
        if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 2:
            raise ValueError(f"calib: expected token ids of shape (nsamples, seqlen >= 2), got {tuple(ids.shape)}")
        return ids, "token ids"
    gen = torch.Generator().manual_seed(seed)
    if calib == MIX:
        texts = mix_corpus()
        parts = [tokenize(tokenizer, text) for _, text in texts]
        short = [n for (n, _), t in zip(texts, parts) if t.numel() < seqlen + 1]
        if short:
            raise ValueError(f"calibration mix: {short} have fewer than seqlen + 1 = {seqlen + 1} tokens")
        starts = [torch.randint(0, t.numel() - seqlen, (nsamples,), generator=gen).tolist() for t in parts]
        return torch.stack([parts[j % len(parts)][starts[j % len(parts)][j // len(parts)]:][:seqlen]
                            for j in range(nsamples)]), MIX
    if calib is None:
        text, source = corpus_split(builtin_corpus())[0], BUILTIN
    else:
        text, source = read_text(calib), os.fspath(calib)
    tokens = tokenize(tokenizer, text)
    if tokens.numel() < seqlen + 1:
        raise ValueError(f"calibration text {source!r}: has {tokens.numel()} tokens, needs at least "
                         f"seqlen + 1 = {seqlen + 1}")
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
