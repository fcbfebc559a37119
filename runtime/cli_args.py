"""Argument types shared by the runtime's subcommands (lutc generate / eval / serve)."""
from __future__ import annotations

import argparse

from lutc.errors import UsageError


def threads_arg(v: str):
    """--threads: an int or 'auto' (measure 1..cores while decoding, use the fastest); the
    commands check the int with check_threads, so the message is one line like every other."""
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'auto', got {v!r}") from None


def check_threads(threads):
    """UsageError unless threads is None, 'auto' or an int >= 1."""
    if isinstance(threads, int) and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
