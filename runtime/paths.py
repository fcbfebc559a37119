"""Where the runtime keeps files: quantized checkpoints of bundled models and pack caches."""
from __future__ import annotations

from pathlib import Path

from lutc.cache import cache_dir


def models_dir() -> Path:
    """$LUTC_CACHE_DIR/models, else the user cache (~/.cache/lutc/models)."""
    return cache_dir() / "models"
