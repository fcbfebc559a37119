"""Where the int8 table error comes from, emulated in numpy (issue 10, W4): the kernel's table
arithmetic (centered g=4 tables, one int8 step per scale block, exact zero term) applied to real
SmolLM2 activations and HLQ weights, error split by bit-plane, for several table candidates.

    python bench/table_error_emu.py CKPT [--tokens 192] [--layers 0,7,15,23,29] [--out out.json]

Activations: the float model's linear inputs on the calibration part of the built-in corpus (the
knob-selection text; never the held-out evaluation text). The first half of the tokens gives the
per-channel statistics a permutation candidate is chosen from, the second half is scored.
Metric: relative output error energy sum ||y_lut - y_exact||^2 / sum ||y_exact||^2 per linear.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

G = 4


def table_errors(x, gs, block, fine=1, perm=None, clip=1.0):
    """(M, T, 16) float error of the quantized tables (quantized - exact), centered tables, one
    step per `block` activations (within a group) = max |entry| / 127 of the block (x clip); fine:
    entries kept at step / fine (residual bits)."""
    m, k = x.shape
    if perm is not None:
        x = x[:, perm]
    t = k // G
    xs = x.reshape(m, t, G)
    idx = np.arange(16)
    bits = ((idx[:, None] >> np.arange(G)[None, :]) & 1).astype(np.float64)       # (16, G)
    tab = xs @ bits.T - 0.5 * xs.sum(-1, keepdims=True)                          # (M, T, 16)
    amax = 0.5 * np.abs(xs).sum(-1)                                              # (M, T)
    tpb = block // G
    ngr = k // gs
    tpg = gs // G
    a = amax.reshape(m, ngr, tpg // tpb, tpb).max(-1) * clip                     # (M, NG, NB)
    step = np.repeat(a.reshape(m, -1), tpb, axis=1) / 127.0                      # (M, T)
    step = np.where(step > 0, step, 1.0)[..., None] / fine
    q = np.clip(np.round(tab / step), -127 * fine, 127 * fine)
    return q * step - tab


def plane_errors(e, codes, scales, gs, perm=None):
    """(bits, M, N): plane b's output error sum_t s_b[n, grp(t)] * e[m, t, idx_b(n, t)]."""
    bits = scales.shape[0]
    if perm is not None:
        codes = codes[:, perm]
    n, k = codes.shape
    t = k // G
    c = codes.reshape(n, t, G).astype(np.int64)
    out = np.zeros((bits, e.shape[0], n))
    for b in range(bits):
        idx = (((c >> b) & 1) << np.arange(G)).sum(-1)                              # (N, T)
        s = np.repeat(scales[b].astype(np.float64), gs // G, axis=1)                # (N, T)
        for tt in range(t):
            out[b] += e[:, tt, idx[:, tt]] * s[:, tt]
    return out


def group_perm(stat, gs):
    """Within each group of gs channels, the channels sorted by descending stat."""
    k = len(stat)
    return np.concatenate([g0 + np.argsort(-stat[g0:g0 + gs], kind="stable") for g0 in range(0, k, gs)])


CANDIDATES = {
    "c32 (default)": dict(block=32),
    "c16": dict(block=16),
    "c8": dict(block=8),
    "c32 top plane x16": dict(block=32, top_fine=16),
    "c32 top plane exact": dict(block=32, top_fine=10 ** 6),
    "c32 top 2 planes x16": dict(block=32, top_fine=16, top_planes=2),
    "c32 permuted (rms)": dict(block=32, perm="rms"),
    "c16 permuted (rms)": dict(block=16, perm="rms"),
    "c32 permuted (max)": dict(block=32, perm="max"),
}


def evaluate(x_stat, x, qt, cands=CANDIDATES):
    gs = qt.group_size
    w = qt.dequantize().astype(np.float64)
    y = x @ w.T
    pad = -qt.K % gs                        # zero activations past K, as the kernel's masked loads
    x, x_stat = (np.pad(v, ((0, 0), (0, pad))) for v in (x, x_stat))
    codes = np.pad(qt.codes, ((0, 0), (0, pad)))
    den = float((y ** 2).sum())
    out = {}
    stats = {"rms": np.sqrt((x_stat ** 2).mean(0)), "max": np.abs(x_stat).max(0)}
    for name, c in cands.items():
        perm = group_perm(stats[c["perm"]], gs) if "perm" in c else None
        e = table_errors(x, gs, c["block"], perm=perm, clip=c.get("clip", 1.0))
        pe = plane_errors(e, codes, qt.scales, gs, perm)
        if "top_fine" in c:
            ef = table_errors(x, gs, c["block"], fine=c["top_fine"], perm=perm)
            bits = qt.bits
            top = range(bits - c.get("top_planes", 1), bits)
            for b in top:
                one = qt.scales[b:b + 1]
                codes_b = (codes >> b) & 1
                pe[b] = plane_errors(ef, codes_b.astype(np.uint8), one, gs, perm)[0]
        err = pe.sum(0)
        out[name] = {"rel_err": float((err ** 2).sum() / den),
                     "plane_share": [float((p ** 2).sum() / max((err ** 2).sum(), 1e-300)) for p in pe]}
    return out


def capture(tokens: int, layers):
    import torch
    from quant.calib import builtin_corpus, corpus_split
    from quant.source import load_source_model
    model, tok = load_source_model("smollm2-135m")
    calib = corpus_split(builtin_corpus())[0]
    ids = tok(calib[len(calib) // 3:], return_tensors="pt")["input_ids"][:, :tokens]
    want = {}
    for i in layers:
        for mod in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
            want[f"model.layers.{i}.{mod}"] = None
    hooks = []
    for name, mod in model.named_modules():
        if name in want:
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: want.__setitem__(name, inp[0][0].detach().double().numpy())))
    with torch.inference_mode():
        model(ids)
    for h in hooks:
        h.remove()
    weights = {n: m.weight.detach().float().numpy() for n, m in model.named_modules() if n in want}
    return want, weights


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--layers", default="0,7,15,23,29")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="comma-separated candidate names")
    a = ap.parse_args()
    acts, weights = capture(a.tokens, [int(v) for v in a.layers.split(",")])
    if a.ckpt.startswith("hlq:"):           # quick look without a checkpoint: plain HLQ, hlq:BITS:GS
        import quant
        _, bits, gs = a.ckpt.split(":")
        linears = {n: quant.quantize(w, int(bits), int(gs), "hlq") for n, w in weights.items()}
    else:
        from quant.checkpoint import load_checkpoint
        linears = load_checkpoint(a.ckpt).linears
    cands = CANDIDATES if not a.only else {k: CANDIDATES[k] for k in a.only.split(";")}
    res = {}
    half = a.tokens // 2
    for name, x in acts.items():
        qt = linears[name]
        r = evaluate(x[:half], x[half:], qt, cands)
        res[name] = r
        print(name, " ".join(f"{k}={v['rel_err']:.3e}" for k, v in r.items()), flush=True)
    names = list(cands)
    print("\nmean relative error energy vs the default, and plane shares of the default:")
    base = np.array([res[l][names[0]]["rel_err"] for l in res])
    for k in names:
        v = np.array([res[l][k]["rel_err"] for l in res])
        share = np.mean([res[l][k]["plane_share"] for l in res], axis=0)
        print(f"{k:<24} {np.mean(v / base):.3f}x  geo {np.exp(np.mean(np.log(v / base))):.3f}x  planes "
              + " ".join(f"{s:.2f}" for s in share))
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
