"""Perplexity table of a source model under rtn / gptq / hlq / hlq-gptq / hlq-ft at W2-W4, g64/g128 (python -m quant.ppl_table).

Calibration: the built-in corpus minus its held-out 15% (quant.calib), except where the hlq-ft defaults
name another text (quant.finetune.BITS_DEFAULTS: the text mix at W4). Evaluation: that held-out 15%
and, with --text FILE (repeatable), other held-out texts, each with the ratio to the float model."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .calib import eval_ids
from .eval import evaluate
from .model_quant import quantize_model
from .source import load_source_model

METHODS = ("rtn", "gptq", "hlq", "hlq-gptq", "hlq-ft")
MAIN = "held-out 15%"  # label of the built-in corpus' held-out part
CELLS_FIRST = [("gptq", 2, 64), ("hlq-gptq", 2, 64), ("gptq", 3, 128), ("hlq-gptq", 3, 128)]  # the targets


def _cells():
    rest = [(m, b, g) for m in METHODS for b in (2, 3, 4) for g in (64, 128)]
    return CELLS_FIRST + [c for c in rest if c not in CELLS_FIRST]


def _save(path, results):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def ratio_markdown(results: dict, label: str = MAIN) -> str:
    """Perplexity on one held-out text and its ratio to float32, for the cells present in results."""
    cols = sorted({(int(k.split("-W")[1].split("-g")[0]), int(k.rsplit("-g", 1)[1]))
                   for k in results if "-W" in k})
    base = _ppl(results.get("float32"), label)
    lines = ["| method | " + " | ".join(f"W{b} g{g}" for b, g in cols) + " |", "|---|" + "---|" * len(cols)]
    if base:
        lines.append("| float32 | " + " | ".join(f"{base:.2f}" for _ in cols) + " |")
    for m in METHODS:
        cells = []
        for b, g in cols:
            p = _ppl(results.get(f"{m}-W{b}-g{g}"), label)
            cells.append("-" if p is None else f"{p:,.2f} ({p / base:.2f}x)" if base else f"{p:,.2f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ppl(r, label):
    if not r:
        return None
    if label == MAIN:
        return r.get("ppl")
    return r.get("texts", {}).get(label, {}).get("ppl")


def markdown(results: dict) -> str:
    """The table: rows float32 then methods, columns W2/W3/W4 x g64/g128; cells 'ppl (wall s / cpu s)'."""
    cols = [(b, g) for b in (2, 3, 4) for g in (64, 128)]
    lines = ["| method | " + " | ".join(f"W{b} g{g}" for b, g in cols) + " |",
             "|---|" + "---|" * len(cols)]
    base = results.get("float32")
    if base:
        lines.append("| float32 | " + " | ".join(f"{base['ppl']:.2f}" for _ in cols) + " |")
    for m in METHODS:
        cells = []
        for b, g in cols:
            r = results.get(f"{m}-W{b}-g{g}")
            wall = f"{r['quant_seconds']:.0f} s" if r and r.get("quant_seconds") is not None else "? s"
            cells.append(f"{r['ppl']:.2f} ({wall} / {r['quant_cpu_seconds']:.0f} cpu-s)" if r else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m quant.ppl_table", description=__doc__)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default="ppl_table.json", help="results JSON (resumed if it exists)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--stride", type=int, default=512)
    p.add_argument("--nsamples", type=int, default=None)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--cells", default=None, help="comma list like hlq-gptq:2:64 (default: all 24)")
    p.add_argument("--lut", default="", help="cells (method:bits:group) also evaluated with LUT kernels")
    p.add_argument("--lut-tokens", type=int, default=1024)
    p.add_argument("--ft-epochs", type=int, default=None, help="hlq-ft cells: epochs per block")
    p.add_argument("--ft-samples", type=int, default=None, help="hlq-ft cells: samples fine-tuned on")
    p.add_argument("--ft-lr", type=float, default=None, help="hlq-ft cells: learning rate")
    p.add_argument("--ft-e2e-epochs", type=int, default=None, help="hlq-ft cells: epochs of the end-to-end scale pass")
    p.add_argument("--ft-e2e-lr", type=float, default=None, help="hlq-ft cells: learning rate of the end-to-end pass")
    p.add_argument("--ft-e2e-loss", default=None, help="hlq-ft cells: end-to-end objective (ce, kl)")
    p.add_argument("--ft-rechoose", action="store_true", default=None,
                   help="hlq-ft cells: re-choose the codes after every epoch (GPTQ over the trained grid)")
    p.add_argument("--ft-schedule", default=None, help="hlq-ft cells: block-wise lr schedule (constant, cosine)")
    p.add_argument("--ft-batch", type=int, default=None, help="hlq-ft cells: windows per step")
    p.add_argument("--text", action="append", default=[],
                   help="another held-out text file to evaluate every cell on (repeatable)")
    args = p.parse_args(argv)
    results = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    src, tok = load_source_model(args.model)
    ids, source = eval_ids(tok, None, args.max_tokens)
    ev = dict(window=args.window, stride=args.stride)
    results["settings"] = {"model": args.model, "eval_tokens": int(ids.numel()), "eval_source": source, **ev}
    others = {os.path.basename(t): eval_ids(tok, t, args.max_tokens)[0] for t in args.text}
    results["settings"]["texts"] = {os.path.basename(t): {"path": t, "tokens": int(others[os.path.basename(t)].numel())}
                                    for t in args.text}
    if "float32" not in results:
        results["float32"] = evaluate(src, tokens=ids, **ev)
        _save(args.out, results)
    _add_texts(results["float32"], src, others, ev, args.out, results)
    print(f"float32: {results['float32']['ppl']:.3f}", file=sys.stderr, flush=True)
    cells = _cells() if not args.cells else [(m, int(b), int(g)) for m, b, g in
                                              (c.split(":") for c in args.cells.split(","))]
    lut = {tuple(c.split(":")) for c in args.lut.split(",") if c}
    qkw = {k: v for k, v in (("nsamples", args.nsamples), ("seqlen", args.seqlen)) if v is not None}
    for m, b, g in cells:
        key = f"{m}-W{b}-g{g}"
        want_lut = (m, str(b), str(g)) in lut and "lut_float32" not in results.get(key, {})
        if key in results and not want_lut:
            if others and not all(t in results[key].get("texts", {}) for t in others):
                print(f"{key}: re-quantizing to evaluate on {list(others)}", file=sys.stderr, flush=True)
            else:
                continue
        t0 = time.perf_counter()
        ft = {k: v for k, v in (("epochs", args.ft_epochs), ("samples", args.ft_samples), ("lr", args.ft_lr),
                                ("e2e_epochs", args.ft_e2e_epochs), ("e2e_lr", args.ft_e2e_lr),
                                ("e2e_loss", args.ft_e2e_loss),
                                ("rechoose", args.ft_rechoose), ("batch", args.ft_batch),
                                ("schedule", args.ft_schedule)) if v is not None}
        qm = quantize_model(src, b, g, m, tokenizer=tok, **qkw, **({"ft": ft} if m == "hlq-ft" else {}))
        qsec = time.perf_counter() - t0
        r = results.get(key) or {"quant_seconds": round(qsec, 1), "quant_cpu_seconds": qm.meta["cpu_seconds"],
                                 "ft": qm.meta.get("ft"),
                                 "load_avg_1min": round(os.getloadavg()[0], 2), **evaluate(qm, tokens=ids, **ev)}
        if want_lut:
            short = ids[:args.lut_tokens]
            lkw = dict(tokens=short, window=min(args.window, short.numel()), stride=args.stride)
            r["lut_tokens"] = int(short.numel())
            r["fake_short"] = evaluate(qm, mode="fake", **lkw)["ppl"]
            r["lut_float32"] = evaluate(qm, mode="lut", lut_dtype="float32", **lkw)["ppl"]
            r["lut_int8"] = evaluate(qm, mode="lut", lut_dtype="int8", **lkw)["ppl"]
        results[key] = r
        _save(args.out, results)
        _add_texts(r, qm, others, ev, args.out, results)
        print(f"{key}: ppl {r['ppl']:.3f}, quantization {r['quant_seconds']:.0f}s", file=sys.stderr, flush=True)
        del qm
    print(markdown(results))
    for label in [MAIN] + list(others):
        print(f"\n{label}:\n" + ratio_markdown(results, label))
    return 0


def _add_texts(r, model, others, ev, out, results):
    """Evaluate `model` on the other held-out texts missing from r["texts"]; save after each."""
    for label, tokens in others.items():
        if label not in r.setdefault("texts", {}):
            r["texts"][label] = evaluate(model, tokens=tokens, **ev)
            _save(out, results)


if __name__ == "__main__":
    sys.exit(main())
