"""quantize_model(): quantize every linear layer of a LLaMA-family HF model, block by block (GPTQ-style)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import os
import sys
import time

import numpy as np
import torch

from .actstore import HESSIAN_ROWS, ActStore
from .api import quantize
from .calib import calibration_ids
from .finetune import FTConfig, finetune_block, finetune_e2e
from .gptq import HessianAccumulator, gptq_quantize
from .model import QuantizedModel
from .source import open_source, tokenizer_dir_for
from .tensor import QuantizedTensor, _is_int

__all__ = ["quantize_model", "MODEL_METHODS", "split_rows", "offload_codes"]

MODEL_METHODS = ("rtn", "hlq", "gptq", "hlq-gptq", "hlq-ft")
_CALIBRATED = {"gptq": "rtn", "hlq-gptq": "hlq", "hlq-ft": "hlq"}  # method -> group fit inside GPTQ


def _lutc_version() -> str:
    """The installed lutc distribution's version (quant is part of it; it never imports lutc)."""
    try:
        return importlib.metadata.version("lutc")
    except importlib.metadata.PackageNotFoundError:      # running from a source tree
        return "unknown"


def split_rows(qt: QuantizedTensor, sizes) -> list:
    """Split a QuantizedTensor along N into consecutive parts of the given row counts."""
    out, r0 = [], 0
    for n in sizes:
        r1 = r0 + n
        out.append(QuantizedTensor(bits=qt.bits, group_size=qt.group_size, shape=(int(n), qt.K),
                                   codes=np.ascontiguousarray(qt.codes[r0:r1]),
                                   scales=np.ascontiguousarray(qt.scales[:, r0:r1]),
                                   zeros=np.ascontiguousarray(qt.zeros[r0:r1]), method=qt.method))
        r0 = r1
    return out


def offload_codes(qt: QuantizedTensor, folder, name: str) -> QuantizedTensor:
    """qt with its codes written to folder/name.codes.npy and memory-mapped back read-only, with
    no page resident: the codes cost disk, not RAM, until something reads them."""
    import mmap
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(os.fspath(folder), name + ".codes.npy")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=qt.codes.shape)
    out[...] = qt.codes
    out.flush()
    del out
    codes = np.load(path, mmap_mode="r")
    new = dataclasses.replace(qt, codes=codes)  # validation reads the codes once...
    if hasattr(mmap, "MADV_DONTNEED"):
        codes._mmap.madvise(mmap.MADV_DONTNEED)  # ...and these pages leave this process again
    return new


def _libc():
    """glibc through ctypes, or False (another C library, or not found)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
            _LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc malloc_trim). Streaming frees a block's weights
    and temporaries every block; glibc's adaptive mmap threshold otherwise keeps them in the heap,
    and the resident size grows with the number of blocks."""
    if _libc():
        _LIBC.malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_STREAM_MMAP_THRESHOLD = 1 << 20


def _fix_mmap_threshold() -> None:
    """Streaming: serve every allocation of 1 MiB or more by its own mmap, returned to the OS when
    freed (glibc mallopt M_MMAP_THRESHOLD; this also turns off the adaptive threshold, which after
    the first large free keeps arrays up to 32 MiB in the heap). Process-wide and permanent.
    Measured on the 16-block streaming test model with hlq-gptq: peak RssAnon +108 MB -> +68 MB."""
    if _libc():
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _STREAM_MMAP_THRESHOLD)


_LIBC = None


def _input_groups(mods: dict, run) -> tuple[list, list]:
    """Linears grouped by shared input (q/k/v, gate/up), in call order, from one probe run;
    plus the linears the probe never called."""
    seen, owner = {}, {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0]
            hit = seen.get(id(x))
            owner.setdefault(name, hit[1] if hit is not None and hit[0] is x else name)
            seen.setdefault(id(x), (x, name))  # holding x keeps id(x) unique during the probe
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    groups = {}
    for name in owner:
        groups.setdefault(owner[name], []).append(name)
    return list(groups.values()), [n for n in mods if n not in owner]


class _SequentialGPTQ:
    """True-sequential GPTQ in one forward pass over the whole calibration batch: a pre-hook on the
    first linear of each input-sharing group builds the Hessian from that input and quantizes the
    group (writing fake-quant weights) before the layer uses them. So every linear sees inputs
    produced by the already-quantized linears before it, and each block runs forward once."""

    def __init__(self, mods: dict, groups: list, quantize_group):
        self._quantize_group = quantize_group
        self._handles = [mods[names[0]].register_forward_pre_hook(self._hook(names)) for names in groups]

    def _hook(self, names):
        def pre(module, inputs):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])
            acc = HessianAccumulator(x.shape[-1])
            for part in x.split(HESSIAN_ROWS):
                acc.add(part)
            self._quantize_group(names, acc)  # gptq_quantize takes acc's H and frees it early
        return pre

    def remove(self):
        for h in self._handles:
            h.remove()


def _finetune(layer, mods, linears, prefix, h_in, h_out, target, pos, pe, ft, index, info, progress, w_float=None):
    """hlq-ft for one block: train its scales/zeros (quant.finetune), write the result into
    `linears` and the block's fake-quant weights; returns the block's output on h_in.
    h_out: the block's output with the hlq-gptq weights (from the true-sequential GPTQ pass)."""
    qts = {n: linears[prefix + n] for n in mods if prefix + n in linears}
    new, info[prefix + "ft"], y = finetune_block(layer, qts, h_in, target, lambda m, x: _run_layer(m, x, pos, pe),
                                                 ft, index, progress, y_before=h_out, w_float=w_float)
    for n, qt in new.items():
        linears[prefix + n] = dataclasses.replace(qt, method="hlq-ft")
        mods[n].weight.copy_(torch.from_numpy(qt.dequantize()))
    return y


def _run_layer(layer, h, pos, pe):
    y = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
    return y[0] if isinstance(y, tuple) else y


class _Progress:
    def __init__(self, enabled: bool, label: str):
        self.enabled, self.label, self.t0, self.c0 = enabled, label, time.perf_counter(), time.process_time()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def cpu(self) -> float:
        """CPU seconds of this process (all threads): comparable across runs on a shared machine."""
        return time.process_time() - self.c0

    def __call__(self, msg: str):
        if self.enabled:
            print(f"[quant {self.label}] {msg} ({self.elapsed():.1f}s)", file=sys.stderr, flush=True)


def _check_args(bits, group_size, method, lm_head_bits, lm_head_group_size, nsamples, seqlen):
    for name, v, lo, hi in (("bits", bits, 1, 4), ("lm_head_bits", lm_head_bits, 1, 4),
                            ("group_size", group_size, 1, None), ("lm_head_group_size", lm_head_group_size, 1, None),
                            ("nsamples", nsamples, 1, None), ("seqlen", seqlen, 2, None)):
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"{name}: expected an int {rng}, got {v!r}")
    if method not in MODEL_METHODS:
        raise ValueError(f"method: expected one of {MODEL_METHODS}, got {method!r}")


def quantize_model(model_or_path, bits: int, group_size: int = 128, method: str = "hlq-gptq", calib=None,
                   lm_head_bits: int = 4, lm_head_group_size: int = 128, nsamples: int = 32, seqlen: int = 512,
                   progress: bool = True, *, tokenizer=None, act_order: bool = False, damp: float = 0.01,
                   rounds: int = 15, seed: int = 0, ft: FTConfig | dict | None = None,
                   offload_dir=None) -> QuantizedModel:
    """Quantize every linear layer (and lm_head) of a LLaMA-family model; returns a QuantizedModel.

    model_or_path: an HF model object, an HF safetensors directory (read lazily, one block
    at a time), a .gguf file, or "smollm2-135m". method: "rtn" | "hlq" (no calibration) or
    "gptq" | "hlq-gptq" (GPTQ with a uniform / HLQ group fit). Calibrated methods run the
    calibration activations block by block through the already-quantized earlier blocks, and
    within a block true-sequentially (o_proj's Hessian comes from quantized q/k/v, and so on):
    one forward pass per block over all nsamples x seqlen tokens at once.
    lm_head (also when tied to the embeddings) uses lm_head_bits / lm_head_group_size.
    calib: None (built-in corpus; for hlq-ft the ft config's calib, quant.calib.MIX at W4), a text file
    path, quant.calib.MIX (several built-in texts), or token ids (nsamples, seqlen).
    "hlq-ft" is hlq-gptq followed, per block, by fine-tuning the block's scales and zeros
    against the float block's outputs, then optionally (ft e2e_epochs > 0) an end-to-end pass
    over the scales only (quant.finetune; knobs in `ft`: an FTConfig or its kwargs).
    offload_dir: a directory; each finished block's codes go there as .npy files and come back
    memory-mapped (not resident), so a model larger than RAM streams from a safetensors directory
    with about one float block and the fp16 scales in memory; calibration activations go to scratch
    files there too and each block runs in chunks of windows (quant.actstore; same results)
    (glibc's heap is also trimmed per block and its mmap threshold fixed at 1 MiB, process-wide).
    """
    _check_args(bits, group_size, method, lm_head_bits, lm_head_group_size, nsamples, seqlen)
    if method == "hlq-ft":
        if not isinstance(ft, FTConfig):
            knobs = {"seed": seed, **(ft or {})}
            if offload_dir is not None:  # a default e2e pass (W4) is skipped when streaming; an explicit one is refused
                knobs.setdefault("e2e_epochs", 0)
            ft = FTConfig.for_bits(bits, **knobs)
        if ft.e2e_epochs and offload_dir is not None:
            raise ValueError("hlq-ft e2e_epochs > 0 trains the whole model at once: not with offload_dir")
        if calib is None:
            calib = ft.calib
    else:
        ft = None
    from transformers import AutoModelForCausalLM

    if offload_dir is not None:
        _fix_mmap_threshold()
    src = open_source(model_or_path, tokenizer)
    config = src.config
    n_layers = int(config.num_hidden_layers)
    prog = _Progress(progress, f"{method} W{bits} g{group_size}")
    for need in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.weight"):
        fused = need.replace("q_proj", "qkv_proj")          # Phi-3 fuses q/k/v in one matrix
        if not src.has(need) and not src.has(fused):
            raise ValueError(f"source model {src.description}: no tensor {need!r}; "
                             "expected a LLaMA-family causal LM")
    with torch.device("meta"):
        try:
            skel = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
        except ValueError:                                     # e.g. Gemma-2 (soft-capping): eager only
            skel = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    linears, tensors, info = {}, {}, {}
    teacher = None  # hlq-ft e2e "kl": (float final-norm outputs on the calibration windows, lm_head weight)
    embed = src.get("model.embed_tokens.weight")
    tensors["model.embed_tokens.weight"] = embed.detach().numpy()
    fit = _CALIBRATED.get(method)
    calib_meta = None
    acts = ActStore(offload_dir, trim=_trim_heap) if offload_dir is not None and fit is not None else None
    with torch.no_grad():  # not inference_mode: hlq-ft trains inside, on these tensors
        if fit is not None:
            if (calib is None or isinstance(calib, (str, os.PathLike))) and src.tokenizer is None:
                raise ValueError("calibration text needs a tokenizer: pass tokenizer=... or calib=token ids")
            ids, calib_src = calibration_ids(src.tokenizer, calib, nsamples, seqlen, seed)
            calib_meta = {"source": calib_src, "nsamples": int(ids.shape[0]), "seqlen": int(ids.shape[1]),
                          "seed": seed, "act_order": bool(act_order), "damp": damp}
            h = torch.nn.functional.embedding(ids, embed) if acts is None else acts.embedding(ids, embed)
            pos = torch.arange(ids.shape[1])[None]
            rot = type(skel.model.rotary_emb)(config=skel.config)
            if "layer_type" in inspect.signature(rot.forward).parameters:     # Gemma-3: local/global RoPE
                pes = {t: rot(h[:1], pos, t) for t in set(config.layer_types)}
            else:
                pes = None
                pe = rot(h[:1], pos)
            if ft is not None:
                calib_meta["ft"] = ft.as_dict()
                h_fp = h  # the float model's activations: the fine-tuning targets
            prog(f"calibration: {ids.shape[0]} x {ids.shape[1]} tokens from {calib_src}")
        for i in range(n_layers):
            prefix = f"model.layers.{i}."
            layer = skel.model.layers[i].to_empty(device="cpu")
            sd_names = list(layer.state_dict().keys())
            layer.load_state_dict({k: src.get(prefix + k) for k in sd_names}, strict=True)
            mods = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
            if fit is not None:
                if pes is not None:
                    pe = pes[config.layer_types[i]]

                def quantize_group(names, H, prefix=prefix, mods=mods):  # H: a HessianAccumulator
                    w = torch.cat([mods[n].weight for n in names]) if len(names) > 1 else mods[names[0]].weight
                    qt, gi = gptq_quantize(w, H, bits, group_size, fit=fit, damp=damp, act_order=act_order,
                                           rounds=rounds)
                    info[prefix + ",".join(names)] = gi
                    for n, part in zip(names, split_rows(qt, [mods[n].out_features for n in names])):
                        linears[prefix + n] = part
                        mods[n].weight.copy_(torch.from_numpy(part.dequantize()))

                probe = (h[:1, :2], pos[:, :2], tuple(t[:, :2] for t in pe))
                run = lambda m, x, pos=pos, pe=pe: _run_layer(m, x, pos, pe)  # noqa: E731
                groups, unused = _input_groups(mods, lambda: _run_layer(layer, *probe))
                if ft is not None:  # float block on float inputs, before GPTQ
                    h_fp = _run_layer(layer, h_fp, pos, pe) if acts is None else acts.forward(run, layer, h_fp)
                h_in = h
                w_float = ({n: m.weight.detach().clone() for n, m in mods.items()}  # GPTQ overwrites them
                           if ft is not None and ft.rechoose else None)
                if acts is not None:  # the same, chunked over windows, activations in scratch files
                    h = acts.sequential_gptq(run, layer, mods, groups, h, quantize_group)
                else:
                    seq = _SequentialGPTQ(mods, groups, quantize_group)
                    try:
                        h = _run_layer(layer, h, pos, pe)
                    finally:
                        seq.remove()
                if ft is not None:
                    h = _finetune(layer, mods, linears, prefix, h_in, h, h_fp, pos, pe, ft, i, info, prog.enabled,
                                  w_float)
                    h = h if acts is None else acts.put(h)
                del h_in, w_float
            else:
                unused = list(mods)
            for n in unused:  # no calibration (plain method), or a linear the forward never calls
                linears[prefix + n] = quantize(mods[n].weight.detach().numpy(), bits, group_size,
                                               fit or method, rounds)
            quantized = {n + ".weight" for n in mods}
            for k in sd_names:
                if k not in quantized:
                    tensors[prefix + k] = src.get(prefix + k).detach().numpy().copy()
            layer.to_empty(device="meta")  # frees this block's float32 weights
            if offload_dir is not None:
                for n in mods:
                    linears[prefix + n] = offload_codes(linears[prefix + n], offload_dir, prefix + n)
                _trim_heap()
            loss = sum(v["loss"] for k, v in info.items() if k.startswith(prefix) and "loss" in v)
            fti = info.get(prefix + "ft")
            prog(f"layer {i + 1}/{n_layers}" + (f", GPTQ loss {loss:.4g}" if fit is not None else "")
                 + (f", FT block {'MSE' if ft.block_loss == 'mse' else 'rel. error'} {fti['loss_before']:.4g} -> {fti['loss_after']:.4g}"
                    f"{'' if fti['kept'] else ' (kept hlq-gptq)'}" if fti else ""))
        tensors["model.norm.weight"] = src.get("model.norm.weight").detach().numpy().copy()
        w_head = src.get("lm_head.weight")
        if fit is not None:
            norm = skel.model.norm.to_empty(device="cpu")
            norm.load_state_dict({"weight": src.get("model.norm.weight")})
            acc = HessianAccumulator(h.shape[-1])
            for part in h.split(8):
                acc.add(norm(part))
            del h
            linears["lm_head"], info["lm_head"] = gptq_quantize(
                w_head, acc, lm_head_bits, lm_head_group_size, fit=fit, damp=damp, act_order=act_order,
                rounds=rounds)
            if ft is not None and ft.e2e_epochs and ft.e2e_loss == "kl":  # the float model's final outputs
                teacher = (torch.cat([norm(part) for part in h_fp.split(8)]), w_head)
        else:
            linears["lm_head"] = quantize(w_head.detach().numpy(), lm_head_bits, lm_head_group_size, method, rounds)
        if ft is not None:  # lm_head is hlq-gptq (not fine-tuned); the model's method names it
            linears["lm_head"] = dataclasses.replace(linears["lm_head"], method="hlq-ft")
        if offload_dir is not None:
            linears["lm_head"] = offload_codes(linears["lm_head"], offload_dir, "lm_head")
        prog("lm_head")
    tok_dir = src.tokenizer_dir or (tokenizer_dir_for(src.tokenizer) if src.tokenizer is not None else None)
    cfg = json.loads(config.to_json_string(use_diff=False))  # JSON-normal form: what a checkpoint stores
    if not cfg.get("architectures"):
        cfg["architectures"] = [type(skel).__name__]
    e2e = None
    if ft is not None and ft.e2e_epochs:
        prog(f"e2e: {ft.e2e_epochs} epoch(s) over {ids.shape[0]} x {ids.shape[1]} tokens, scales only")
        new, e2e = finetune_e2e(QuantizedModel(config=cfg, linears=linears, tensors=tensors, meta={}), ids, ft,
                                prog.enabled, teacher)
        linears.update(new)
        prog(f"e2e: {'next-token' if ft.e2e_loss == 'ce' else 'KL'} loss "
             f"{e2e['loss_before']:.4f} -> {e2e['loss_after']:.4f}"
             + ("" if e2e["kept"] else " (kept block-wise result)"))
    meta = {"method": method, "bits": int(bits), "group_size": int(group_size),
            "lm_head_bits": int(lm_head_bits), "lm_head_group_size": int(lm_head_group_size),
            "source": src.description, "lutc_version": _lutc_version(), "calibration": calib_meta,
            "rounds": int(rounds), "seconds": round(prog.elapsed(), 2), "cpu_seconds": round(prog.cpu(), 2),
            "gptq_loss_total": round(sum(v["loss"] for v in info.values() if "loss" in v), 6) if info else None}
    if ft is not None:
        fts = [v for k, v in info.items() if k.endswith(".ft")]
        meta["ft"] = {**ft.as_dict(), "blocks_kept": sum(v["kept"] for v in fts),
                      "mse_before": [round(v["loss_before"], 8) for v in fts],
                      "mse_after": [round(v["loss_after"], 8) for v in fts]}
        if ft.rechoose:
            meta["ft"]["rechosen"] = [v.get("rechosen", 0) for v in fts]
        if e2e is not None:
            meta["ft"]["e2e"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in e2e.items()}
    return QuantizedModel(config=cfg, linears=linears, tensors=tensors, tokenizer_dir=tok_dir, meta=meta)
