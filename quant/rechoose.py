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

from .gptq import _inverse_cholesky
from .tensor import QuantizedTensor, code_values

__all__ = ["rechoose_codes", "layer_hessians"]


def rechoose_codes(w, H, qt: QuantizedTensor, damp: float = 0.01, block_size: int = 128) -> QuantizedTensor:
    """The codes GPTQ picks for float w (N, K) under H (K, K) on qt's fixed grid; scales/zeros unchanged."""
    W = torch.as_tensor(w).detach().to(torch.float32).clone()
    n, k = W.shape
    if (n, k) != tuple(qt.shape):
        raise ValueError(f"w: expected shape {tuple(qt.shape)}, got {tuple(W.shape)}")
    H = torch.as_tensor(H).detach().to(torch.float32).clone()
    if H.shape != (k, k):
        raise ValueError(f"H: expected shape ({k}, {k}), got {tuple(H.shape)}")
    if not (torch.isfinite(W).all() and torch.isfinite(H).all()):
        raise ValueError("w and H must be finite")
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U, _ = _inverse_cholesky(H, damp)
    values = torch.from_numpy(np.ascontiguousarray(np.moveaxis(code_values(qt.scales, qt.zeros), 1, 0)))  # (G, N, C)
    gs = qt.group_size
    Wt = W.T.contiguous()  # (K, N)
    codes_t = torch.empty((k, n), dtype=torch.uint8)
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        W1, Hinv1 = Wt[b0:b1], U[b0:b1, b0:b1]
        Err1 = torch.empty_like(W1)
        for i in range(b1 - b0):
            V = values[(b0 + i) // gs]
            w_col = W1[i]
            code = torch.argmin((w_col[:, None] - V).abs_(), dim=1)  # exhaustive over the 2^bits levels
            q = V.gather(1, code[:, None])[:, 0]
            codes_t[b0 + i] = code.to(torch.uint8)
            err = (w_col - q) / Hinv1[i, i]
            W1[i:].addmm_(Hinv1[i, i:, None], err[None], alpha=-1.0)
            Err1[i] = err
        if b1 < k:
            Wt[b1:].addmm_(U[b0:b1, b1:].T, Err1, alpha=-1.0)
    return QuantizedTensor(bits=qt.bits, group_size=gs, shape=qt.shape, codes=np.ascontiguousarray(codes_t.T.numpy()),
                           scales=qt.scales, zeros=qt.zeros, method=qt.method)


def layer_hessians(layer, names, run, x: torch.Tensor, batch: int) -> dict:
    """H = 2/n * sum x_t x_t^T of the inputs of each linear `names` of `layer` while run(layer, x) runs."""
    acc = {n: [torch.zeros(()), 0] for n in names}
    hooks = []

    def hook(name):
        def record(module, inputs):
            a = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
            acc[name][0] = acc[name][0] + a.T @ a
            acc[name][1] += a.shape[0]
        return record

    for n in names:
        hooks.append(layer.get_submodule(n).register_forward_pre_hook(hook(n)))
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                run(layer, x[i:i + batch])
    finally:
        for h in hooks:
            h.remove()
    return {n: (2.0 / max(c, 1) * s).to(torch.float32) for n, (s, c) in acc.items()}

