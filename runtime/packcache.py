"""Pack cache: a decoder's kernel-layout weights saved once per checkpoint and memory-mapped on
later starts. Everything read back is validated (schema, sizes, layout, checksum); any mismatch
is a PackCacheError, and the caller rebuilds the cache."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import lutc
import numpy as np
from lutc.kernels import PackedWeights
from lutc.ops import default_layout as target_layout
from lutc.schedule import LAYOUT_KNOBS, Schedule
from quant.checkpoint import MANIFEST, sha256_file

from .paths import models_dir

FORMAT = "lutc-runtime-packed"
VERSION = 2
_ALIGN = 64
_DTYPES = ("uint8", "float16", "float32")
_PACKING_SOURCES = ("packing.py", "spec.py")     # the layout code: a change invalidates every cache


class PackCacheError(ValueError):
    """A pack cache that is incomplete, corrupt, or of another format or layout."""


@dataclasses.dataclass(eq=False)
class PackedModel:
    """What LeanDecoder needs, with the linears already packed: config, float tensors, PackedWeights."""

    config: dict
    tensors: dict
    packed: dict
    tokenizer_dir: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)


def _packing_hash() -> str:
    root = Path(lutc.__file__).resolve().parent / "kernels"
    h = hashlib.sha256()
    for name in _PACKING_SOURCES:
        h.update((root / name).read_bytes())
    return h.hexdigest()


def default_layout(knobs=None) -> dict:
    """The packed layout knobs an untuned decoder packs with on this host: the host target's
    default (lutc.ops.default_layout: 64-row tiles on AVX-512, 32 elsewhere), overridden by `knobs`."""
    base = Schedule(bits=4, group_size=128, bn=target_layout("host")["bn"])
    return {k: (knobs or {}).get(k, getattr(base, k)) for k in LAYOUT_KNOBS}


def cache_path(checkpoint_dir, lut_dtype=None, knobs=None) -> Path:
    """The pack-cache folder of a checkpoint: keyed by its manifest, its path, lutc's version, the
    packing code, the table dtype and the default packed layout (`default_layout(knobs)`), so packs
    of two layouts (e.g. 32-row tiles under LUTC_HOST_TARGET=x86-avx2 and 64-row ones on the
    AVX-512 host) never share a folder. (A tuning db that picks another layout for some linear
    is caught on load: runtime.linear.StalePackError, and the folder is rebuilt.)"""
    ckpt = Path(checkpoint_dir).resolve()
    h = hashlib.sha256()
    layout = sorted(default_layout(knobs).items())
    for part in (FORMAT, VERSION, lutc.__version__, _packing_hash(), str(ckpt), str(lut_dtype), layout):
        h.update(repr(part).encode() + b"\0")
    h.update((ckpt / MANIFEST).read_bytes())
    return models_dir() / "packed" / f"{ckpt.name}-{h.hexdigest()[:16]}"


def save(model: PackedModel, path) -> Path:
    """Write a PackedModel to `path` (a temp folder, fsynced, then renamed into place)."""
    path = Path(path)
    arrays, linears = dict(model.tensors), {}
    for key, p in model.packed.items():
        linears[key] = dict(N=p.N, K=p.K, num_groups=p.num_groups, num_tiles=p.num_tiles,
                            layout_key=list(p.layout_key))
        arrays[key + ".w"], arrays[key + ".sz"] = p.w, p.sz
    entries, offset = {}, 0
    for name, a in arrays.items():
        offset = -(-offset // _ALIGN) * _ALIGN
        entries[name] = dict(dtype=str(a.dtype), shape=list(a.shape), offset=offset)
        offset += a.nbytes
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        h = hashlib.sha256()
        with open(tmp / "weights.bin", "wb") as f:
            for name, a in arrays.items():
                pad = entries[name]["offset"] - f.tell()
                data = np.ascontiguousarray(a).tobytes()
                for chunk in (b"\0" * pad, data):
                    f.write(chunk)
                    h.update(chunk)
            f.flush()
            os.fsync(f.fileno())
        meta = dict(format=FORMAT, version=VERSION, config=model.config, tokenizer_dir=model.tokenizer_dir,
                    meta=model.meta, linears=linears, arrays=entries, nbytes=offset, sha256=h.hexdigest())
        with open(tmp / "meta.json", "w") as f:
            f.write(json.dumps(meta, default=str))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, path)
        except OSError:                 # another process got there first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load(path, verify: bool = True) -> PackedModel:
    """Memory-map a pack-cache folder; PackCacheError unless every part checks out."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise PackCacheError(f"{path}: unreadable meta.json: {e}") from None
    try:
        return _load(path, meta, verify)
    except PackCacheError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, OverflowError) as e:
        raise PackCacheError(f"{path}: malformed pack cache: {type(e).__name__}: {e}") from None


def _load(path, meta, verify):
    def need(cond, what):
        if not cond:
            raise PackCacheError(f"{path}: {what}")
    need(isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("version") == VERSION,
         f"not a lutc runtime pack cache of version {VERSION}")
    for k, t in (("config", dict), ("meta", dict), ("linears", dict), ("arrays", dict), ("nbytes", int),
                 ("sha256", str)):
        need(isinstance(meta.get(k), t), f"meta.json: {k!r} must be a {t.__name__}")
    need(meta["tokenizer_dir"] is None or isinstance(meta["tokenizer_dir"], str), "meta.json: bad tokenizer_dir")
    blob = np.memmap(path / "weights.bin", dtype=np.uint8, mode="r")
    need(blob.size == meta["nbytes"], f"weights.bin has {blob.size} bytes, expected {meta['nbytes']}")
    if verify:
        need(sha256_file(path / "weights.bin") == meta["sha256"], "weights.bin checksum mismatch")

    def arr(name):
        e = meta["arrays"][name]
        need(isinstance(e, dict) and e.get("dtype") in _DTYPES, f"array {name!r}: bad dtype")
        shape, off = e.get("shape"), e.get("offset")
        need(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape), f"array {name!r}: bad shape")
        need(isinstance(off, int) and not isinstance(off, bool) and off >= 0 and off % _ALIGN == 0,
             f"array {name!r}: bad offset")
        dt = np.dtype(e["dtype"])
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        need(off + n <= blob.size, f"array {name!r}: bytes {off}..{off + n} outside weights.bin")
        return blob[off:off + n].view(dt).reshape(shape)

    packed = {}
    for key, d in meta["linears"].items():
        need(isinstance(d, dict), f"linear {key!r}: not an object")
        lk = d["layout_key"]
        need(isinstance(lk, list) and len(lk) == 5, f"linear {key!r}: bad layout_key")
        sched = Schedule(bits=lk[0], group_size=lk[1], g=lk[2], bn=lk[3], interleave=lk[4])
        pw = PackedWeights(tuple(lk), d["N"], d["K"], d["num_groups"], d["num_tiles"],
                           arr(key + ".w").reshape(-1), arr(key + ".sz").reshape(-1))
        pw.check(sched)               # sizes, dtypes and counts against the layout
        packed[key] = pw
    tensors = {name: arr(name) for name in meta["arrays"] if name.startswith("model.")}
    return PackedModel(config=meta["config"], tensors=tensors, packed=packed, tokenizer_dir=meta["tokenizer_dir"],
                       meta=dict(meta["meta"], pack_cache=str(path)))
