"""Code re-choice for hlq-ft: GPTQ over a fixed HLQ grid (the trained per-plane scales and zeros).

Given a linear layer's float weights W (N, K), the Hessian H of its inputs and a QuantizedTensor
whose scales/zeros were fine-tuned, choose every weight's code again, column by column as GPTQ
does: exhaustively the nearest of the 2^bits code values of its (row, group) to the
error-compensated weight, then spread the rounding error over the columns not yet chosen. Scales
and zeros are kept bit for bit, so only the codes move. The caller decides whether to keep the
result (quant.finetune measures the block loss before and after).
"""

from __future__ import annotations

import numpy as np
import torch

from .gptq import HessianAccumulator, gptq_quantize
from .tensor import QuantizedTensor

__all__ = ["rechoose_codes", "layer_hessians"]


def rechoose_codes(w, H, qt: QuantizedTensor, damp: float = 0.01, block_size: int = 128) -> QuantizedTensor:
    """The codes GPTQ picks for float w (N, K) under H (K, K) on qt's fixed grid; scales/zeros unchanged
    (the same arrays). GPTQ's own column loop (quant.gptq.gptq_quantize with grid=)."""
    if tuple(np.shape(w)) != tuple(qt.shape):
        raise ValueError(f"w: expected shape {tuple(qt.shape)}, got {tuple(np.shape(w))}")
    new, _ = gptq_quantize(w, H, qt.bits, qt.group_size, damp=damp, block_size=block_size,
                           grid=(qt.scales, qt.zeros))
    return QuantizedTensor(bits=qt.bits, group_size=qt.group_size, shape=qt.shape, codes=new.codes,
                           scales=qt.scales, zeros=qt.zeros, method=qt.method)


def layer_hessians(layer, names, run, x: torch.Tensor, batch: int) -> dict:
    """H = 2/n * sum x_t x_t^T of the inputs of each linear `names` of `layer` while run(layer, x)
    runs (one quant.gptq.HessianAccumulator per linear, as GPTQ builds them)."""
    acc = {}

    def hook(name):
        def record(module, inputs):
            if name not in acc:
                acc[name] = HessianAccumulator(inputs[0].shape[-1])
            acc[name].add(inputs[0])
        return record

    hooks = [layer.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                run(layer, x[i:i + batch])
    finally:
        for h in hooks:
            h.remove()
    return {n: a.take() for n, a in acc.items()}
