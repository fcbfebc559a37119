"""HLQ-FT: block-wise fine-tuning of HLQ scales and zeros (ELUTQ's efficient fine-tuning, EfficientQAT Block-AP).

Per decoder block, after hlq-gptq has chosen the codes, the per-bit-plane scales and the
per-group zeros of every quantized linear of the block are trained (Adam, fp32) to minimize
the error (cfg.block_loss: mean squared, or per-token relative) between the block's output on the
quantized model's calibration activations and the float block's output on the float model's activations. Codes stay
fixed, or (cfg.rechoose) re-chosen after every epoch by GPTQ over the trained grid
(quant.rechoose), kept only where that lowers the block loss. The result is an ordinary
QuantizedTensor: the parameters are rounded to fp16 at the end and the loss is measured again
after rounding; a block whose rounded loss is not lower than before keeps its hlq-gptq parameters.

Parametrization (so one learning rate fits every layer): s_i = s0_i * (1 + a_i) and
z = z0 + r * c, with r = sum_i |s0_i| the group's code range; a and c start at 0.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .calib import MIX
from .rechoose import layer_hessians, rechoose_codes
from .tensor import QuantizedTensor, bitplanes

__all__ = ["FTConfig", "FTLinear", "finetune_block", "finetune_e2e", "SCHEDULES", "E2E_LOSSES", "BLOCK_LOSSES", "BITS_DEFAULTS",
           "block_loss"]

# Per-bit-width defaults that differ from FTConfig's (measured on SmolLM2-135M, docs/quantization.md).
# W4: calibration on the text mix (quant.calib.MIX), one epoch at batch 1 (16 steps per block) on the
# per-token relative block loss, then two epochs of the end-to-end scale pass at lr 3e-4: the best measured
# on the knob-selection text (docs/quantization.md, "W4 g128: calibration mix and a sink-free block loss").
BITS_DEFAULTS: dict = {4: {"epochs": 1, "batch": 1, "block_loss": "rel", "calib": MIX,
                           "e2e_epochs": 2, "e2e_lr": 3e-4}}
SCHEDULES = ("constant", "cosine")  # block-wise lr: constant, or cosine decay from lr to 0 over all steps
# block-wise objective: "mse", the mean squared error of the block output; "rel", every token's squared
# error relative to its target's squared norm, averaged over tokens (the attention-sink token, whose residual
# is ~100x the others' from SmolLM2's block 11 on, then weighs as much as any other token, not ~all)
BLOCK_LOSSES = ("mse", "rel")
# e2e objective: next-token cross-entropy on the calibration text ("ce"), or the KL divergence from the
# float model's next-token distribution on the same windows ("kl", distillation)
E2E_LOSSES = ("ce", "kl")


class FTConfig:
    """Knobs of the block-wise fine-tuning (defaults measured on SmolLM2-135M, docs/quantization.md)."""

    def __init__(self, epochs: int = 2, lr: float = 1e-3, batch: int = 4, samples: int | None = 16,
                 seed: int = 0, e2e_epochs: int = 0, e2e_lr: float = 1e-4, rechoose: bool = False,
                 schedule: str = "constant", e2e_loss: str = "ce", retries: int = 1, block_loss: str = "mse",
                 calib: str | None = None):
        for name, v, lo in (("epochs", epochs, 0), ("batch", batch, 1), ("e2e_epochs", e2e_epochs, 0),
                            ("retries", retries, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"ft {name}: expected an int >= {lo}, got {v!r}")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"ft samples: expected an int >= 1 or None, got {samples!r}")
        for name, v in (("lr", lr), ("e2e_lr", e2e_lr)):
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"ft {name}: expected a finite float > 0, got {v!r}")
        self.epochs, self.lr, self.batch, self.samples, self.seed = epochs, float(lr), batch, samples, seed
        if schedule not in SCHEDULES:
            raise ValueError(f"ft schedule: expected one of {SCHEDULES}, got {schedule!r}")
        if not isinstance(rechoose, bool):
            raise ValueError(f"ft rechoose: expected a bool, got {rechoose!r}")
        if e2e_loss not in E2E_LOSSES:
            raise ValueError(f"ft e2e_loss: expected one of {E2E_LOSSES}, got {e2e_loss!r}")
        self.e2e_epochs, self.e2e_lr, self.rechoose, self.schedule = e2e_epochs, float(e2e_lr), rechoose, schedule
        if block_loss not in BLOCK_LOSSES:
            raise ValueError(f"ft block_loss: expected one of {BLOCK_LOSSES}, got {block_loss!r}")
        if calib is not None and not isinstance(calib, str):
            raise ValueError(f"ft calib: expected None or a str (a text file, or quant.calib.MIX), got {calib!r}")
        self.e2e_loss, self.retries, self.block_loss = e2e_loss, retries, block_loss
        self.calib = calib  # the calibration text when quantize_model is given none (None: the built-in corpus)

    @classmethod
    def for_bits(cls, bits: int, **knobs) -> "FTConfig":
        """The config with BITS_DEFAULTS[bits] (if any) in place of the plain defaults; knobs override both."""
        return cls(**{**BITS_DEFAULTS.get(int(bits), {}), **knobs})

    def as_dict(self) -> dict:
        return {"epochs": self.epochs, "lr": self.lr, "batch": self.batch, "samples": self.samples,
                "seed": self.seed, "e2e_epochs": self.e2e_epochs, "e2e_lr": self.e2e_lr,
                "rechoose": self.rechoose, "schedule": self.schedule, "e2e_loss": self.e2e_loss,
                "retries": self.retries, "block_loss": self.block_loss,
                "calib": self.calib}


class FTLinear(torch.nn.Module):
    """A linear layer whose weight is sum_i s_i * bit_i(codes) + z with trainable fp32 s, z (codes fixed)."""

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.qt = qt
        self.register_buffer("planes", self._planes(qt), persistent=False)
        s0 = torch.from_numpy(qt.scales.astype(np.float32))  # (bits, N, G)
        z0 = torch.from_numpy(qt.zeros.astype(np.float32))  # (N, G)
        self.register_buffer("s0", s0, persistent=False)
        self.register_buffer("z0", z0, persistent=False)
        self.register_buffer("r", s0.abs().sum(0).clamp_min(1e-8), persistent=False)
        self.a = torch.nn.Parameter(torch.zeros_like(s0))
        self.c = torch.nn.Parameter(torch.zeros_like(z0))
        self.bias = bias

    @staticmethod
    def _planes(qt: QuantizedTensor) -> torch.Tensor:
        planes = torch.from_numpy(bitplanes(qt.codes, qt.bits)).to(torch.float32)  # (bits, N, K)
        g = -(-qt.K // qt.group_size)
        if g * qt.group_size != qt.K:  # ragged last group: zero-padded to whole groups
            planes = torch.nn.functional.pad(planes, (0, g * qt.group_size - qt.K))
        return planes.view(qt.bits, qt.N, g, qt.group_size)

    def set_codes(self, codes: np.ndarray) -> None:
        """Replace the (fixed) codes; the trainable parameters and their optimizer state stay."""
        self.qt = dataclasses.replace(self.qt, codes=codes)
        self.planes = self._planes(self.qt)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current fp32 (scales (bits, N, G), zeros (N, G))."""
        return self.s0 * (1 + self.a), self.z0 + self.r * self.c

    def weight(self) -> torch.Tensor:
        s, z = self.params()  # broadcast over each group: autograd keeps no (bits, N, K) temporary
        w = (s[..., None] * self.planes).sum(0) + z[..., None]
        return w.reshape(self.qt.N, -1)[:, :self.qt.K]

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight(), self.bias)

    def rounded(self) -> QuantizedTensor:
        """The QuantizedTensor with the trained parameters rounded to fp16 (non-finite -> original)."""
        with torch.no_grad():
            s, z = self.params()
        s16, z16 = s.numpy().astype(np.float16), z.numpy().astype(np.float16)
        ok = np.isfinite(s16).all(0) & np.isfinite(z16)
        s16 = np.where(ok[None], s16, self.qt.scales)
        z16 = np.where(ok, z16, self.qt.zeros)
        return QuantizedTensor(bits=self.qt.bits, group_size=self.qt.group_size, shape=self.qt.shape,
                               codes=self.qt.codes, scales=np.ascontiguousarray(s16),
                               zeros=np.ascontiguousarray(z16), method=self.qt.method)


def _set_module(root, name, module):
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def block_loss(y: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The block-wise objective (BLOCK_LOSSES) of outputs y against target, both (n, seq, hidden)."""
    if kind == "mse":
        return torch.nn.functional.mse_loss(y, target)
    err = (y - target).pow(2).sum(-1)
    return (err / target.pow(2).sum(-1).clamp_min(1e-12)).mean()


def _outputs(run, x, batch) -> torch.Tensor:
    """run(x) over all samples without grad, in mini-batches of 2 * batch."""
    with torch.no_grad():
        return torch.cat([run(x[i:i + 2 * batch]) for i in range(0, x.shape[0], 2 * batch)])


def finetune_block(layer, qts: dict, x: torch.Tensor, target: torch.Tensor, run, cfg: FTConfig,
                   block_index: int = 0, progress: bool = False, y_before: torch.Tensor | None = None,
                   w_float: dict | None = None):
    """Fine-tune the HLQ scales/zeros of `layer`'s quantized linears; returns (new QuantizedTensors, info, y).

    layer: the decoder block (its float linears are swapped for FTLinears during training and
    restored after). qts: module name in `layer` -> QuantizedTensor (hlq-gptq result).
    x: (n, seq, hidden) inputs from the quantized model; target: the float block's outputs.
    run(layer, x) -> block output. y_before: the block's output on x with `qts` if the caller
    has it (saves a pass). w_float: module name -> float weight (N, K), needed by cfg.rechoose.
    info: MSE over all of x before and after (fp16-rounded), steps, kept, retries (attempts after the first:
    an attempt whose rounded MSE is not lower is repeated from the start at a quarter of the previous
    lr, at most cfg.retries times); with cfg.rechoose also
    "rechoose": per epoch [MSE on the fine-tuning windows with the old codes, with the re-chosen
    ones, whether those were kept], and "rechosen": how many re-choices were kept.
    y: the block's output on x with the returned tensors (the next block's input).
    """
    if cfg.rechoose and (w_float is None or set(w_float) < set(qts)):
        raise ValueError("ft rechoose: needs w_float, the float weight of every quantized linear")
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + block_index)
    n = x.shape[0] if cfg.samples is None else min(cfg.samples, x.shape[0])
    pick = torch.randperm(x.shape[0], generator=gen)[:n].sort().values if n < x.shape[0] else None
    xs, ts = (x, target) if pick is None else (x[pick], target[pick])
    originals = {name: layer.get_submodule(name) for name in qts}
    frozen = [(p, p.requires_grad) for p in layer.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    info = {"steps": 0, "retries": 0}
    try:
        if y_before is None:  # with the hlq-gptq parameters
            for name, qt in qts.items():
                _set_module(layer, name, FTLinear(qt, originals[name].bias))
            y_before = _outputs(lambda b: run(layer, b), x, cfg.batch)
        info["loss_before"] = float(block_loss(y_before, target, cfg.block_loss))
        for attempt in range(cfg.retries + 1):  # a failed attempt: again from the start at a quarter of the lr
            info["retries"] = attempt
            new, y_after, info["loss_after"] = _train(layer, qts, originals, xs, ts, x, target, run, cfg,
                                                      cfg.lr / 4 ** attempt, gen, n, w_float, info,
                                                      _bar(cfg.epochs * math.ceil(n / cfg.batch),
                                                           f"block {block_index}" + " (retry)" * attempt, progress))
            if info["loss_after"] < info["loss_before"]:
                break
    finally:
        for name, m in originals.items():
            _set_module(layer, name, m)
        for p, req in frozen:
            p.requires_grad_(req)
    info["kept"] = bool(info["loss_after"] < info["loss_before"])
    if not info["kept"]:
        new, y_after = dict(qts), y_before
    return new, info, y_after


def _train(layer, qts, originals, xs, ts, x, target, run, cfg: FTConfig, lr: float, gen, n: int, w_float, info,
           bar):
    """One fine-tuning attempt of a block from the hlq-gptq parameters `qts` at learning rate lr; returns
    (fp16-rounded QuantizedTensors, the block's output on x with them, its MSE against target)."""
    ft = {name: FTLinear(qt, originals[name].bias) for name, qt in qts.items()}
    for name, m in ft.items():
        _set_module(layer, name, m)
    params = [p for m in ft.values() for p in (m.a, m.c)]
    opt = torch.optim.Adam(params, lr=lr)
    steps = cfg.epochs * math.ceil(n / cfg.batch)
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
             if cfg.schedule == "cosine" else None)
    with torch.enable_grad():
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, cfg.batch):
                idx = order[i:i + cfg.batch]
                loss = block_loss(run(layer, xs[idx]), ts[idx], cfg.block_loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                info["steps"] += 1
                if bar is not None:
                    bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
                    bar.update(1)
            if cfg.rechoose:
                _rechoose(layer, ft, w_float, xs, ts, run, cfg.batch, info, cfg.block_loss)
    if bar is not None:
        bar.close()
    new = {name: m.rounded() for name, m in ft.items()}
    # measure after rounding, with exactly the fp16 parameters the checkpoint will hold
    for name, qt in new.items():
        _set_module(layer, name, FTLinear(qt, originals[name].bias))
    y = _outputs(lambda b: run(layer, b), x, cfg.batch)
    return new, y, float(block_loss(y, target, cfg.block_loss))


def _rechoose(layer, ft: dict, w_float: dict, xs, ts, run, batch: int, info: dict, kind: str = "mse") -> None:
    """Re-choose every FTLinear's codes by GPTQ over its current fp16-rounded grid, with the
    Hessians of the block's current inputs; keep the new codes only if the block's MSE on the
    fine-tuning windows falls (else restore the old ones)."""
    def mse():
        return float(block_loss(_outputs(lambda b: run(layer, b), xs, batch), ts, kind))

    with torch.no_grad():
        old = {name: m.qt.codes for name, m in ft.items()}
        before = mse()
        H = layer_hessians(layer, list(ft), run, xs, 2 * batch)
        for name, m in ft.items():
            m.set_codes(rechoose_codes(w_float[name], H[name], m.rounded()).codes)
        after = mse()
    kept = after < before
    info.setdefault("rechoose", []).append([before, after, kept])
    info["rechosen"] = info.get("rechosen", 0) + kept
    if not kept:
        for name, m in ft.items():
            m.set_codes(old[name])


_E2E_CHECK = 8  # calibration samples the keep-or-revert check of the e2e pass runs on (a forward each)


def _next_token_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal LM on ids (batch, seq)."""
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def _kl_loss(model, ids: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(float || quantized) of the next-token distributions on ids (batch, seq)."""
    logq = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    logp = torch.log_softmax(teacher_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def finetune_e2e(qm, ids: torch.Tensor, cfg: FTConfig, progress: bool = False, teacher=None):
    """EfficientQAT's E2E-QP on a QuantizedModel: train only the per-plane scales of every quantized
    linear (zeros and codes fixed), end to end, on the first cfg.samples calibration ids (n, seq); Adam,
    lr cfg.e2e_lr, cfg.e2e_epochs epochs, gradients accumulated over cfg.batch samples (one sample per
    forward). The objective (cfg.e2e_loss): "ce", the next-token cross-entropy of the calibration text;
    "kl", the KL divergence from the float model's next-token distribution (distillation), which needs
    teacher = (hidden, head): the float model's final-norm outputs on ids (n, seq, hidden) and its
    lm_head weight (vocab, hidden), so the float logits of window j are hidden[j] @ head.T.
    Returns (new linears, info): the scales are rounded to fp16 and the objective on the first
    _E2E_CHECK samples is measured again; if it is not lower than before, the old linears come back
    unchanged (info["kept"] False)."""
    from .torch_model import build_torch_model
    if cfg.e2e_loss == "kl":
        if teacher is None:
            raise ValueError("ft e2e_loss 'kl': needs the float model's outputs (teacher=(hidden, head))")
        hidden, head = teacher
        if hidden.shape[:2] != ids.shape or head.shape[1] != hidden.shape[2]:
            raise ValueError(f"ft e2e teacher: hidden {tuple(hidden.shape)} / head {tuple(head.shape)} "
                             f"do not match ids {tuple(ids.shape)}")

        def objective(model, j):
            with torch.no_grad():
                t = torch.nn.functional.linear(hidden[j:j + 1], head)
            return _kl_loss(model, ids[j:j + 1], t)
    else:
        def objective(model, j):
            return _next_token_loss(model, ids[j:j + 1])
    fts = {}

    def ft_linear(name, qt, has_bias):
        bias = torch.nn.Parameter(torch.zeros(qt.N), requires_grad=False) if has_bias else None
        fts[name] = FTLinear(qt, bias)
        return fts[name]

    model = build_torch_model(qm, ft_linear)
    for m in fts.values():
        m.a.requires_grad_(True)

    n_check = min(_E2E_CHECK, ids.shape[0])

    def loss_all():
        with torch.no_grad():
            return float(sum(objective(model, j) for j in range(n_check)) / n_check)

    info = {"loss": cfg.e2e_loss, "loss_before": loss_all(), "steps": 0}
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 999_983)
    opt = torch.optim.Adam([m.a for m in fts.values()], lr=cfg.e2e_lr)
    n = ids.shape[0] if cfg.samples is None else min(cfg.samples, ids.shape[0])
    bar = _bar(cfg.e2e_epochs * math.ceil(n / cfg.batch), "e2e scales", progress)
    with torch.enable_grad():
        for _ in range(cfg.e2e_epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, cfg.batch):
                idx = order[i:i + cfg.batch]
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for j in idx.tolist():
                    loss = objective(model, j) / len(idx)
                    loss.backward()
                    total += loss.item()
                opt.step()
                info["steps"] += 1
                if bar is not None:
                    bar.set_postfix(loss=f"{total:.4g}", refresh=False)
                    bar.update(1)
    if bar is not None:
        bar.close()
    new = {name: m.rounded() for name, m in fts.items()}
    for name, qt in new.items():  # measure with exactly the fp16 scales the checkpoint will hold
        _set_module(model, name, FTLinear(qt, fts[name].bias))
    info["loss_after"] = loss_all()
    info["kept"] = bool(info["loss_after"] < info["loss_before"])
    return (new if info["kept"] else dict(qm.linears)), info


def _bar(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
