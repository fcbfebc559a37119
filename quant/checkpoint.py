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

import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile

import numpy as np

from .model import QuantizedModel
from .tensor import QuantizedTensor

__all__ = ["save_checkpoint", "load_checkpoint", "validate_manifest", "CheckpointError", "pack_codes",
           "unpack_codes", "FORMAT", "FORMAT_VERSION", "MANIFEST"]

FORMAT = "lutc-quantized-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20   # a manifest (or config.json) larger than this is refused unread
MAX_JSON_DEPTH = 64             # nesting deeper than this in manifest.json / config.json is refused
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
def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
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
    """(key, nbytes, make, section, name) for every tensor to store, in a stable order; make()
    builds the array (packing codes only then, so a writer holds one shard's arrays at a time)."""
    for name in sorted(qm.linears):
        qt = qm.linears[name]
        n, k = qt.shape
        yield (f"{name}.qweight", n * math.ceil(k * qt.bits / 8), lambda qt=qt: pack_codes(qt.codes, qt.bits),
               "linears", name)
        yield f"{name}.scales", qt.scales.nbytes, lambda qt=qt: qt.scales, "linears", name
        yield f"{name}.zeros", qt.zeros.nbytes, lambda qt=qt: qt.zeros, "linears", name
    for name in sorted(qm.tensors):
        t = qm.tensors[name]
        yield name, t.nbytes, lambda t=t: np.ascontiguousarray(t), "tensors", name


def _is_checkpoint_or_empty(path: str) -> bool:
    """True for an empty directory or one whose manifest.json is a lutc checkpoint manifest
    (any format version): only those may be replaced by save_checkpoint."""
    if not os.listdir(path):
        return True
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath) or os.path.islink(mpath):
        return False
    try:
        manifest = _read_json(mpath, "manifest")
    except CheckpointError:
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _fsync_dir(path: str) -> None:
    """Make a directory's entries (a rename into it) durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap the directory entries `a` and `b` (both must exist).

    Linux: renameat2(RENAME_EXCHANGE); macOS: renamex_np(RENAME_SWAP). Returns False when the
    OS, libc or filesystem cannot (the caller then falls back to two renames)."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    if sys.platform.startswith("linux"):
        fn = getattr(libc, "renameat2", None)
        if fn is None:
            return False
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        at_fdcwd, flags = -100, 2          # AT_FDCWD, RENAME_EXCHANGE
        rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flags)
    elif sys.platform == "darwin":
        fn = getattr(libc, "renamex_np", None)
        if fn is None:
            return False
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(os.fsencode(a), os.fsencode(b), 0x2)  # RENAME_SWAP
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), a)


def save_checkpoint(qm: QuantizedModel, path, shard_bytes: int = _SHARD_BYTES) -> str:
    """Write `qm` to the directory `path` atomically; returns the path.

    The checkpoint is written into a sibling temp directory first. A new `path` is then created
    with one rename. An existing lutc checkpoint (its manifest.json says format
    "lutc-quantized-checkpoint") or an empty directory at `path` is replaced by an atomic
    exchange of the two directories (renameat2 RENAME_EXCHANGE on Linux, renamex_np RENAME_SWAP
    on macOS), so `path` is never missing and readers see the old checkpoint or the new one;
    the old one is deleted afterwards. Where the OS cannot exchange, the old checkpoint is
    renamed aside first (a short window without `path`). The parent directory is fsynced.
    Any other existing directory or file is refused with CheckpointError.
    """
    from safetensors.numpy import save_file
    if not isinstance(qm, QuantizedModel):
        raise TypeError(f"qm: expected a quant.QuantizedModel, got {type(qm).__name__}")
    path = os.path.abspath(os.fspath(path))

    def check_replaceable():
        if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)
                                          and _is_checkpoint_or_empty(path)):
            raise CheckpointError(f"{path}: exists and is not a lutc checkpoint; refusing to overwrite it")
    check_replaceable()
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        manifest = _write_contents(qm, tmp, shard_bytes, save_file)
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        check_replaceable()  # again: the directory may have changed while we wrote
        if not os.path.lexists(path):
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)   # tmp now holds the old checkpoint
        else:
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "ckpt"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_contents(qm, tmp, shard_bytes, save_file) -> dict:
    shards, cur, size = [], [], 0  # planned from sizes first; each shard's arrays are built when written
    entries = {"linears": {}, "tensors": {}}
    for key, nbytes, make, section, name in _arrays(qm):
        if cur and size + nbytes > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((key, make))
        size += nbytes
    shards.append(cur)
    files = {}
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({key: make() for key, make in shard}, os.path.join(tmp, fname), metadata={"format": FORMAT})
        files[fname] = [key for key, _ in shard]
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
        file_info[rel] = {"bytes": os.path.getsize(full), "sha256": sha256_file(full)}
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
def _depth_ok(obj, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return True


def _read_json(path: str, what: str):
    """Parse a JSON file of at most MAX_MANIFEST_BYTES and MAX_JSON_DEPTH levels; CheckpointError otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing {what}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{path}: {what} larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot parse {what} ({e})") from None
    except RecursionError:
        data = None
    if data is None and raw.strip() != b"null" or not _depth_ok(data, MAX_JSON_DEPTH):
        raise CheckpointError(f"{path}: cannot parse {what} (nested deeper than {MAX_JSON_DEPTH} levels)")
    return data


_HEX64 = re.compile(r"[0-9a-f]{64}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _safe_relname(rel) -> bool:
    """A relative POSIX file name inside the checkpoint: 'model.safetensors', 'tokenizer/vocab.json'.
    No absolute paths, no '..' or '.' components, no backslashes, no hidden or empty components."""
    if not isinstance(rel, str) or not 0 < len(rel) <= 255:
        return False
    parts = rel.split("/")
    return all(_PART.fullmatch(p) and p not in (".", "..") for p in parts)


def validate_manifest(manifest, where: str = MANIFEST) -> dict:
    """Check a parsed manifest against the format-1 schema; returns it, or raises CheckpointError.

    The one place that decides what a manifest may say: format and version; `files` (relative
    names inside the checkpoint, each with a byte size and a sha256); `linears` (bits 1-4,
    group size >= 1, shape (N, K) of ints >= 1, method a string or null, `file` one of the listed
    safetensors files); `tensors` (dtype float32, shape of ints >= 0, `file` listed); `meta` an
    object. Only a manifest that passes is used to open any file.
    """
    def bad(msg):
        raise CheckpointError(f"{where}: {msg}")
    if not isinstance(manifest, dict):
        bad(f"expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        bad(f"not a lutc quantized checkpoint (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or not _is_int(version):
        bad(f"unknown format version {version!r} (this lutc reads {FORMAT_VERSION})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        bad("'files' is missing or empty")
    for rel, info in files.items():
        if not _safe_relname(rel):
            bad(f"file name {rel!r} escapes the checkpoint or is not a plain relative name")
        if not isinstance(info, dict) or not _is_int(info.get("bytes")) or info["bytes"] < 0 \
                or not isinstance(info.get("sha256"), str) or not _HEX64.fullmatch(info["sha256"]):
            bad(f"files[{rel!r}]: expected {{'bytes': int >= 0, 'sha256': 64 hex digits}}, got {info!r}")
    if "config.json" not in files:
        bad("'files' does not list config.json")
    for section in ("linears", "tensors"):
        entries = manifest.get(section, {})
        if not isinstance(entries, dict):
            bad(f"{section!r} must be an object keyed by name, got {type(entries).__name__}")
        for name, e in entries.items():
            what = "linear" if section == "linears" else "tensor"
            if not name or not isinstance(e, dict):
                bad(f"bad entry for {what} {name!r}: {e!r}")
            f = e.get("file")
            if not isinstance(f, str) or f not in files or not f.endswith(".safetensors"):
                bad(f"{what} {name!r}: file {f!r} is not one of the checkpoint's listed .safetensors files")
            shape = e.get("shape")
            if section == "linears":
                bits, gs = e.get("bits"), e.get("group_size")
                if not _is_int(bits) or not 1 <= bits <= 4:
                    bad(f"linear {name!r}: bits must be an int in 1..4, got {bits!r}")
                if not _is_int(gs) or gs < 1:
                    bad(f"linear {name!r}: group_size must be an int >= 1, got {gs!r}")
                if not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(d) and d >= 1 for d in shape):
                    bad(f"linear {name!r}: shape must be [N, K] of ints >= 1, got {shape!r}")
                if e.get("method") is not None and not isinstance(e.get("method"), str):
                    bad(f"linear {name!r}: method must be a string or null, got {e.get('method')!r}")
            else:
                if e.get("dtype") != "float32":
                    bad(f"bad entry for tensor {name!r}: dtype must be 'float32', got {e.get('dtype')!r}")
                if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(d) and d >= 0 for d in shape):
                    bad(f"bad entry for tensor {name!r}: shape must be a list of ints >= 0, got {shape!r}")
    if manifest.get("meta") is not None and not isinstance(manifest.get("meta"), dict):
        bad(f"'meta' must be an object, got {type(manifest.get('meta')).__name__}")
    return manifest


def _check_files(root: str, manifest: dict, verify_hashes: bool) -> None:
    real_root = os.path.realpath(root)
    for rel, info in manifest["files"].items():
        full = os.path.join(root, rel)
        real = os.path.realpath(full)
        if os.path.commonpath([real_root, real]) != real_root:
            raise CheckpointError(f"{full}: resolves outside the checkpoint (to {real})")
        if not os.path.isfile(full):
            raise CheckpointError(f"{full}: missing (listed in the manifest)")
        size = os.path.getsize(full)
        if size != info["bytes"]:
            kind = "truncated" if size < info["bytes"] else "wrong size"
            raise CheckpointError(f"{full}: {kind}: expected {info['bytes']} bytes, found {size}")
        if verify_hashes and sha256_file(full) != info["sha256"]:
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
    manifest = validate_manifest(_read_json(mpath, "manifest"), mpath)
    _check_files(root, manifest, verify_hashes)
    config = _read_json(os.path.join(root, "config.json"), "model config")
    if not isinstance(config, dict) or not isinstance(config.get("model_type", ""), str):
        raise CheckpointError(f"{os.path.join(root, 'config.json')}: expected a JSON object with a 'model_type'")
    reader = _Reader(root)
    linears, tensors = {}, {}
    for name, e in manifest.get("linears", {}).items():
        bits, gs, (n, k), fname = e["bits"], e["group_size"], e["shape"], e["file"]
        g = math.ceil(k / gs)
        packed = reader.get(fname, f"{name}.qweight", np.uint8, (n, math.ceil(k * bits / 8)))
        scales = reader.get(fname, f"{name}.scales", np.float16, (bits, n, g))
        zeros = reader.get(fname, f"{name}.zeros", np.float16, (n, g))
        try:
            linears[name] = QuantizedTensor(bits=bits, group_size=gs, shape=(n, k), codes=unpack_codes(packed, bits, k),
                                            scales=scales, zeros=zeros, method=e.get("method"))
        except ValueError as err:
            raise CheckpointError(f"{os.path.join(root, fname)}: linear {name!r}: {err}") from None
    for name, e in manifest.get("tensors", {}).items():
        tensors[name] = reader.get(e["file"], name, np.float32, tuple(e["shape"]))
    _check_complete(root, config, linears, tensors)
    tok = os.path.join(root, "tokenizer")
    if os.path.isdir(tok):      # the tokenizer is loaded from the directory: only verified files may be in it
        extra = sorted(n for n in os.listdir(tok) if f"tokenizer/{n}" not in manifest["files"])
        if extra:
            raise CheckpointError(f"{tok}: files not listed in the manifest (so not verified): {extra}")
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
