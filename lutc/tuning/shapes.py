"""Weight shapes (N out x K in) of the linear layers of the models lutc targets, and --shapes parsing."""
from __future__ import annotations

MODELS = {
    # LLaMA-2-7B: q/k/v/o 4096x4096, gate/up 11008x4096, down 4096x11008
    "llama-2-7b": ((4096, 4096), (11008, 4096), (4096, 11008)),
    # SmolLM2-135M: q/o 576x576, k/v 192x576 (3 KV heads of 64), gate/up 1536x576, down 576x1536
    "smollm2-135m": ((576, 576), (192, 576), (1536, 576), (576, 1536)),
}


def model_shapes(name: str) -> tuple:
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[key]


def parse_shapes(text: str) -> list:
    """'4096x4096,11008x4096' -> [(4096, 4096), (11008, 4096)] as (N, K)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.lower().split("x")
        try:
            n, k = (int(v) for v in parts)
        except ValueError:
            raise ValueError(f"bad shape {item!r}: expected NxK, e.g. 4096x11008") from None
        if n < 1 or k < 1:
            raise ValueError(f"bad shape {item!r}: N and K must be >= 1")
        out.append((n, k))
    if not out:
        raise ValueError("no shapes given")
    return out


def parse_ints(text: str, name: str, lo: int = 1, hi: int | None = None) -> list:
    """'2,3,4' -> [2, 3, 4], each checked against [lo, hi]."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated integers, got {text!r}") from None
    bad = [v for v in vals if v < lo or (hi is not None and v > hi)]
    if not vals or bad:
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"--{name}: values must be in {rng}, got {text!r}")
    return vals
