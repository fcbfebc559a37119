"""Quantized checkpoints: bit-packed codes + fp16 scales/zeros in safetensors, a JSON manifest, the tokenizer.

Layout of a checkpoint directory (format version 1):

    manifest.json       format, version, lutc version, source, method, per-layer bits/group/shape,
                        every tensor's file, and every file's byte size and sha256
    config.json         the Hugging Face model config
    model*.safetensors  "<linear>.qweight" uint8 (N, ceil(K*bits/8)): each row's codes as a
                        little-endian bit stream (code k in bits k*bits .. k*bits+bits-1);
                        "<linear>.scales" fp16 (bits, N, G); "<linear>.zeros" fp16 (N, G);
                        float32 non-quantized tensors (embeddings, norms, biases) by HF name
    tokenizer/          the tokenizer's files

No pickle anywhere: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile

import numpy as np

from .model import QuantizedModel
from .tensor import QuantizedTensor

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "pack_codes", "unpack_codes",
           "FORMAT", "FORMAT_VERSION", "MANIFEST"]

FORMAT = "lutc-quantized-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SHARD_BYTES = 2 << 30
_ROW_CHUNK = 4096


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt or of an unknown format."""


# ----- bit packing ------------------------------------------------------------------------
def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes (N, K) -> uint8 (N, ceil(K * bits / 8)), row by row, little-endian bit order."""
    n, k = codes.shape
    out = np.empty((n, math.ceil(k * bits / 8)), np.uint8)
    shifts = np.arange(bits, dtype=np.uint8)
    for r0 in range(0, n, _ROW_CHUNK):
        c = codes[r0:r0 + _ROW_CHUNK]
        planes = (c[:, :, None] >> shifts) & 1  # (rows, K, bits)
        out[r0:r0 + _ROW_CHUNK] = np.packbits(planes.reshape(c.shape[0], -1), axis=1, bitorder="little")
    return out


def unpack_codes(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of pack_codes: uint8 (N, ceil(K * bits / 8)) -> uint8 codes (N, K)."""
    n = packed.shape[0]
    out = np.empty((n, k), np.uint8)
    weights = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
    for r0 in range(0, n, _ROW_CHUNK):
        p = packed[r0:r0 + _ROW_CHUNK]
        b = np.unpackbits(p, axis=1, count=k * bits, bitorder="little").reshape(p.shape[0], k, bits)
        out[r0:r0 + _ROW_CHUNK] = (b * weights).sum(-1, dtype=np.uint8)
    return out


# ----- saving -------------------------------------------------------------------------------
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _arrays(qm: QuantizedModel):
    """(key, array, manifest section, name) for every tensor to store, in a stable order."""
    for name in sorted(qm.linears):
        qt = qm.linears[name]
        yield f"{name}.qweight", pack_codes(qt.codes, qt.bits), "linears", name
        yield f"{name}.scales", qt.scales, "linears", name
        yield f"{name}.zeros", qt.zeros, "linears", name
    for name in sorted(qm.tensors):
        yield name, np.ascontiguousarray(qm.tensors[name]), "tensors", name


def _is_checkpoint_or_empty(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST)) or not os.listdir(path)


def save_checkpoint(qm: QuantizedModel, path, shard_bytes: int = _SHARD_BYTES) -> str:
    """Write `qm` to the directory `path` atomically (temp dir, then rename); returns the path.

    An existing lutc checkpoint (or empty directory) at `path` is replaced; any other
    existing directory or file is refused.
    """
    from safetensors.numpy import save_file
    if not isinstance(qm, QuantizedModel):
        raise TypeError(f"qm: expected a quant.QuantizedModel, got {type(qm).__name__}")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not (os.path.isdir(path) and _is_checkpoint_or_empty(path)):
        raise CheckpointError(f"{path}: exists and is not a lutc checkpoint; refusing to overwrite it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        manifest = _write_contents(qm, tmp, shard_bytes, save_file)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "ckpt"))
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_contents(qm, tmp, shard_bytes, save_file) -> dict:
    shards, cur, size = [], {}, 0
    entries = {"linears": {}, "tensors": {}}
    for key, arr, section, name in _arrays(qm):
        if cur and size + arr.nbytes > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[key] = arr
        size += arr.nbytes
    shards.append(cur)
    files = {}
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(tmp, fname), metadata={"format": FORMAT})
        for key in shard:
            files.setdefault(fname, []).append(key)
    where = {key: f for f, keys in files.items() for key in keys}
    for name, qt in qm.linears.items():
        entries["linears"][name] = {"bits": qt.bits, "group_size": qt.group_size, "shape": list(qt.shape),
                                    "method": qt.method, "file": where[f"{name}.qweight"]}
    for name, t in qm.tensors.items():
        entries["tensors"][name] = {"shape": list(t.shape), "dtype": "float32", "file": where[name]}
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
        json.dump(qm.config, f, indent=1, sort_keys=True, default=str)
    tok_files = _save_tokenizer(qm.tokenizer_dir, os.path.join(tmp, "tokenizer"))
    listed = sorted(files) + ["config.json"] + [f"tokenizer/{n}" for n in tok_files]
    file_info = {}
    for rel in listed:
        full = os.path.join(tmp, rel)
        _fsync_file(full)
        file_info[rel] = {"bytes": os.path.getsize(full), "sha256": _sha256(full)}
    from . import model_quant
    meta = dict(qm.meta)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "lutc_version": model_quant._lutc_version(),
            "source": meta.get("source"), "method": meta.get("method"), "bits": meta.get("bits"),
            "group_size": meta.get("group_size"), "meta": meta, "files": file_info, **entries}


def _save_tokenizer(tokenizer_dir, dest) -> list:
    """Save the tokenizer found in tokenizer_dir (only tokenizer files) into dest; returns file names."""
    if tokenizer_dir is None:
        return []
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"tokenizer_dir {tokenizer_dir!r}: cannot load a tokenizer from it ({e})") from None
    os.makedirs(dest)
    tok.save_pretrained(dest)
    return sorted(n for n in os.listdir(dest) if os.path.isfile(os.path.join(dest, n)))


# ----- loading ------------------------------------------------------------------------------
def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot parse {what} ({e})") from None


def _check_files(root: str, manifest: dict, verify_hashes: bool) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{os.path.join(root, MANIFEST)}: 'files' is missing or empty")
    for rel, info in files.items():
        full = os.path.join(root, rel)
        if os.path.normpath(rel).startswith("..") or os.path.isabs(rel):
            raise CheckpointError(f"{os.path.join(root, MANIFEST)}: file name {rel!r} escapes the checkpoint")
        if not os.path.isfile(full):
            raise CheckpointError(f"{full}: missing (listed in the manifest)")
        size = os.path.getsize(full)
        if size != info.get("bytes"):
            kind = "truncated" if size < info.get("bytes", 0) else "wrong size"
            raise CheckpointError(f"{full}: {kind}: expected {info.get('bytes')} bytes, found {size}")
        if verify_hashes and _sha256(full) != info.get("sha256"):
            raise CheckpointError(f"{full}: corrupt: sha256 does not match the manifest")


class _Reader:
    """Reads named arrays from the checkpoint's safetensors files; errors name file and tensor."""

    def __init__(self, root: str):
        self.root, self._open = root, {}

    def get(self, fname: str, key: str, dtype, shape) -> np.ndarray:
        from safetensors import safe_open
        full = os.path.join(self.root, fname)
        try:
            f = self._open.get(fname)
            if f is None:
                f = self._open[fname] = safe_open(full, framework="numpy")
            if key not in f.keys():
                raise CheckpointError(f"{full}: missing tensor {key!r}")
            arr = f.get_tensor(key)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{full}: cannot read tensor {key!r} ({e})") from None
        if arr.dtype != np.dtype(dtype) or tuple(arr.shape) != tuple(shape):
            raise CheckpointError(f"{full}: tensor {key!r}: expected {np.dtype(dtype)} {tuple(shape)}, "
                                  f"got {arr.dtype} {tuple(arr.shape)}")
        return np.ascontiguousarray(arr)


def load_checkpoint(path, verify_hashes: bool = True) -> QuantizedModel:
    """Load and validate a checkpoint directory; CheckpointError names the file and tensor at fault.

    Quantized layers come back as QuantizedTensors (uint8 codes, fp16 scales/zeros): no
    float32 copy of them is made.
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise CheckpointError(f"{root}: not a directory")
    mpath = os.path.join(root, MANIFEST)
    manifest = _read_json(mpath, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: not a lutc quantized checkpoint (format {manifest.get('format')!r})"
                              if isinstance(manifest, dict) else f"{mpath}: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{mpath}: unknown format version {version!r} (this lutc reads {FORMAT_VERSION})")
    _check_files(root, manifest, verify_hashes)
    config = _read_json(os.path.join(root, "config.json"), "model config")
    reader = _Reader(root)
    linears, tensors = {}, {}
    for name, e in (manifest.get("linears") or {}).items():
        try:
            bits, gs, (n, k) = int(e["bits"]), int(e["group_size"]), (int(d) for d in e["shape"])
            fname = e["file"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{mpath}: bad entry for linear {name!r}: {e!r}") from None
        g = math.ceil(k / gs)
        packed = reader.get(fname, f"{name}.qweight", np.uint8, (n, math.ceil(k * bits / 8)))
        scales = reader.get(fname, f"{name}.scales", np.float16, (bits, n, g))
        zeros = reader.get(fname, f"{name}.zeros", np.float16, (n, g))
        try:
            linears[name] = QuantizedTensor(bits=bits, group_size=gs, shape=(n, k), codes=unpack_codes(packed, bits, k),
                                            scales=scales, zeros=zeros, method=e.get("method"))
        except ValueError as err:
            raise CheckpointError(f"{os.path.join(root, fname)}: linear {name!r}: {err}") from None
    for name, e in (manifest.get("tensors") or {}).items():
        if e.get("dtype") != "float32" or "file" not in e or "shape" not in e:
            raise CheckpointError(f"{mpath}: bad entry for tensor {name!r}: {e!r}")
        tensors[name] = reader.get(e["file"], name, np.float32, tuple(e["shape"]))
    _check_complete(root, config, linears, tensors)
    tok = os.path.join(root, "tokenizer")
    return QuantizedModel(config=config, linears=linears, tensors=tensors,
                          tokenizer_dir=tok if os.path.isdir(tok) else None, meta=dict(manifest.get("meta") or {}))


def _check_complete(root: str, config: dict, linears: dict, tensors: dict) -> None:
    """Every linear of the architecture has a QuantizedTensor of its shape, every other parameter a tensor."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:  # completeness needs transformers; the per-tensor checks above still ran
        return
    cfg = dict(config)
    try:
        hf = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with torch.device("meta"):
            skel = AutoModelForCausalLM.from_config(hf)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{os.path.join(root, 'config.json')}: cannot build the model it describes ({e})") from None
    lin = {n: m for n, m in skel.named_modules() if isinstance(m, torch.nn.Linear)}
    for n, m in lin.items():
        qt = linears.get(n)
        if qt is None:
            raise CheckpointError(f"{root}: missing quantized linear {n!r}")
        if qt.shape != (m.out_features, m.in_features):
            raise CheckpointError(f"{root}: linear {n!r}: expected shape {(m.out_features, m.in_features)}, "
                                  f"got {qt.shape}")
    for n, p in skel.named_parameters(remove_duplicate=False):
        if n.endswith(".weight") and n[:-7] in lin:
            continue
        t = tensors.get(n)
        if t is None:
            raise CheckpointError(f"{root}: missing tensor {n!r}")
        if t.shape != tuple(p.shape):
            raise CheckpointError(f"{root}: tensor {n!r}: expected shape {tuple(p.shape)}, got {t.shape}")
