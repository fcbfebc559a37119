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

__all__ = ["rechoose_codes", "layer_hessians", "layer_objective", "refit_params", "refit_layer"]


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


def layer_objective(w, H, qt: QuantizedTensor) -> float:
    """GPTQ's objective tr((W_hat - W) H (W_hat - W)^T) of qt's dequantized weights against float w."""
    D = torch.from_numpy(qt.dequantize()) - torch.as_tensor(w).to(torch.float32)
    return float(((D @ torch.as_tensor(H).to(torch.float32)) * D).sum(dtype=torch.float64))


def refit_params(w, H, qt: QuantizedTensor, ridge: float = 1e-6, chunk: int = 1024) -> QuantizedTensor:
    """Least-squares scales and zeros for qt's fixed codes under H: per row, the (bits + 1) * G parameters
    minimizing (P theta - w) H (P theta - w)^T (P: the row's bit-planes and group indicators), with a
    ridge of `ridge` x mean(diag) pulling undetermined directions to qt's parameters; rounded to fp16
    (non-finite results keep qt's)."""
    n, k = qt.shape
    bits, gs, g = qt.bits, qt.group_size, qt.num_groups
    W = torch.as_tensor(w).detach().to(torch.float64)
    Hd = torch.as_tensor(H).detach().to(torch.float64)
    planes = torch.from_numpy(np.ascontiguousarray(
        np.stack([(qt.codes >> i) & 1 for i in range(bits)] + [np.ones_like(qt.codes)], -1)))  # (N, K, bits+1)
    col_group = torch.arange(k) // gs
    onehot = torch.nn.functional.one_hot(col_group, g).to(torch.float64)  # (K, G)
    theta0 = torch.from_numpy(np.concatenate([np.moveaxis(qt.scales, 0, -1), qt.zeros[..., None]], -1)
                              .astype(np.float64))  # (N, G, bits+1)
    out = np.empty((n, g, bits + 1), np.float16)
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        # P (rows, K, G*(bits+1)): column (group, plane) is the plane's bits inside the group
        P = (onehot[None, :, :, None] * planes[r0:r1, :, None, :].to(torch.float64)).reshape(r1 - r0, k, -1)
        HP = torch.einsum("kj,rjp->rkp", Hd, P)
        A = P.transpose(1, 2) @ HP  # (rows, p, p)
        b = torch.einsum("rk,rkp->rp", W[r0:r1], HP)
        lam = ridge * A.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)[:, None, None]
        eye = torch.eye(A.shape[-1], dtype=torch.float64)
        t0 = theta0[r0:r1].reshape(r1 - r0, -1)
        theta = torch.linalg.solve(A + lam * eye, b + lam[..., 0] * t0)
        with np.errstate(over="ignore", invalid="ignore"):
            t16 = theta.reshape(r1 - r0, g, bits + 1).numpy().astype(np.float16)
        ok = np.isfinite(t16).all(-1, keepdims=True)
        out[r0:r1] = np.where(ok, t16, theta0[r0:r1].numpy().astype(np.float16))
    return QuantizedTensor(bits=bits, group_size=gs, shape=qt.shape, codes=qt.codes,
                           scales=np.ascontiguousarray(np.moveaxis(out[..., :-1], -1, 0)),
                           zeros=np.ascontiguousarray(out[..., -1]), method=qt.method)


def refit_layer(w, H, qt: QuantizedTensor, rounds: int = 2, damp: float = 0.01):
    """Alternate least-squares scales/zeros (refit_params) and GPTQ code re-choice (rechoose_codes) under
    H, `rounds` times; returns (the best QuantizedTensor by layer_objective, qt included, and the list of
    objectives: qt's, then after each refit and each re-choice)."""
    best, best_obj = qt, layer_objective(w, H, qt)
    trace, cur = [best_obj], qt
    for _ in range(rounds):
        for step in (lambda q: refit_params(w, H, q), lambda q: rechoose_codes(w, H, q, damp=damp)):
            cur = step(cur)
            obj = layer_objective(w, H, cur)
            trace.append(obj)
            if obj < best_obj:
                best, best_obj = cur, obj
    return best, trace
