"""Compiled-object caches: in memory and on disk (atomic writes, checksummed entries)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_MAGIC = b"LUTCOBJ1"


def cache_dir() -> Path:
    """LUTC_CACHE_DIR, else $XDG_CACHE_HOME/lutc, else ~/.cache/lutc."""
    env = os.environ.get("LUTC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lutc"


def atomic_write(path: Path, data: bytes):
    """Write `data` to `path` so readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def hash_key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()


class DiskCache:
    """Object files keyed by hash. A corrupt or truncated entry reads as a miss."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else None

    @property
    def dir(self) -> Path:
        return self.root if self.root is not None else cache_dir() / "kernels"

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.o"

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        head = len(_MAGIC) + 32
        if len(data) < head or not data.startswith(_MAGIC):
            return None
        digest, payload = data[len(_MAGIC):head], data[head:]
        if hashlib.sha256(payload).digest() != digest:
            return None
        return payload

    def put(self, key: str, payload: bytes):
        try:
            atomic_write(self._path(key), _MAGIC + hashlib.sha256(payload).digest() + payload)
        except OSError:
            pass  # a read-only or full cache folder only costs a recompile next time
