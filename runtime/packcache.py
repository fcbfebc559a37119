"""Pack cache: a decoder's kernel-layout weights saved once per checkpoint and memory-mapped on later starts."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ._native import PackedLinear
from .decoder import FUSED

FORMAT = "lutc-runtime-packed"
VERSION = 1
_ALIGN = 64


@dataclasses.dataclass(eq=False)
class PackedModel:
    """What LeanDecoder needs, with the linears already packed: config, float tensors, PackedLinears."""

    config: dict
    tensors: dict
    packed: dict
    tokenizer_dir: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)


def cache_path(checkpoint_dir, lut_dtype=None) -> Path:
    """The pack-cache folder for a checkpoint: keyed by its manifest, its path, lutc's version and table dtype."""
    import lutc
    from quant.checkpoint import MANIFEST

    from .models import models_dir
    ckpt = Path(checkpoint_dir).resolve()
    h = hashlib.sha256()
    for part in (FORMAT, VERSION, lutc.__version__, str(ckpt), str(lut_dtype)):
        h.update(repr(part).encode() + b"\0")
    h.update((ckpt / MANIFEST).read_bytes())
    return models_dir() / "packed" / f"{ckpt.name}-{h.hexdigest()[:16]}"


def save(dec, path) -> Path:
    """Write dec's packed weights and float tensors to `path` (temp folder, then an atomic rename)."""
    from .decoder import _layer_names
    path = Path(path)
    arrays, linears = {}, {}

    def add_linear(key, ql):
        p = ql.packed
        linears[key] = dict(bits=ql.bits, group_size=ql.group_size, N=p.N, K=p.K, num_groups=p.num_groups,
                            num_tiles=p.num_tiles, layout_key=list(p.layout_key))
        arrays[key + ".w"], arrays[key + ".sz"] = p.w, p.sz
    for i, L in enumerate(dec.layers):
        for k, ql in zip(FUSED, (L.qkv, L.o, L.gu, L.down)):
            add_linear(f"{i}.{k}", ql)
        n = _layer_names(i)
        arrays[n["ln1"]], arrays[n["ln2"]] = L.ln1, L.ln2
    add_linear("lm_head", dec.lm_head)
    arrays["model.embed_tokens.weight"], arrays["model.norm.weight"] = dec.embed, dec.norm
    entries, offset = {}, 0
    for name, a in arrays.items():
        offset = -(-offset // _ALIGN) * _ALIGN
        entries[name] = dict(dtype=str(a.dtype), shape=list(a.shape), offset=offset)
        offset += a.nbytes
    meta = dict(format=FORMAT, version=VERSION, config=dec.config_dict, tokenizer_dir=dec.tokenizer_dir,
                meta=dec.meta, linears=linears, arrays=entries, nbytes=offset)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with open(tmp / "weights.bin", "wb") as f:
            for name, a in arrays.items():
                f.seek(entries[name]["offset"])
                f.write(np.ascontiguousarray(a).tobytes())
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        (tmp / "meta.json").write_text(json.dumps(meta, default=str))
        try:
            os.rename(tmp, path)
        except OSError:                 # another process got there first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load(path) -> PackedModel:
    """Memory-map a pack-cache folder; ValueError if it is incomplete or of another format."""
    from lutc.kernels.packing import PackedWeights
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: not a lutc runtime pack cache of version {VERSION}")
    blob = np.memmap(path / "weights.bin", dtype=np.uint8, mode="r")
    if blob.size != meta["nbytes"]:
        raise ValueError(f"{path}: weights.bin has {blob.size} bytes, expected {meta['nbytes']}")

    def arr(name):
        e = meta["arrays"][name]
        dt = np.dtype(e["dtype"])
        n = int(np.prod(e["shape"], dtype=np.int64)) * dt.itemsize
        return blob[e["offset"]:e["offset"] + n].view(dt).reshape(e["shape"])
    packed = {}
    for key, d in meta["linears"].items():
        pw = PackedWeights(tuple(d["layout_key"]), d["N"], d["K"], d["num_groups"], d["num_tiles"],
                           arr(key + ".w"), arr(key + ".sz"))
        packed[key] = PackedLinear(d["bits"], d["group_size"], pw)
    tensors = {name: arr(name) for name in meta["arrays"] if name.startswith("model.")}
    return PackedModel(config=meta["config"], tensors=tensors, packed=packed, tokenizer_dir=meta["tokenizer_dir"],
                       meta=dict(meta["meta"], pack_cache=str(path)))
