"""`lutc eval --mode all`: exact (fake-quant) logits against every table precision and scale block,
each run through the runtime's native step program (LeanDecoder prefill with all_logits).

For each configuration: perplexity over the same sliding windows as quant.eval.sliding_nll,
teacher-forced top-1 agreement with the exact path (the fraction of scored positions whose
argmax token is the exact path's), and the decode cost relative to the default schedule
(median seconds per decode step, configurations timed interleaved in one run).
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np


def windows(total: int, window: int, stride: int):
    """(begin, end, lo) per window as quant.eval.sliding_nll scores them: targets lo..end-1."""
    prev_end = 0
    for begin in range(0, total, stride):
        end = min(begin + window, total)
        lo = max(prev_end, begin + 1)
        if lo < end:
            yield begin, end, lo
        prev_end = end
        if end == total:
            break


def configs(group_size: int, blocks=(64, 32, 16), ratios=(0, 64)) -> list:
    """(label, schedule knob overrides): the default schedules (prefill chunks on the int8 dot path
    where the default chooses it), the default on the LUT path only, float tables, the pre-issue-10
    int8 path (one scale per group, uncentered), centered int8 tables per scale block (all LUT),
    each block with every integer-ratio limit in `ratios` (0: float block scales; one row for
    block = group)."""
    lut = {"path": "lut"}
    out = [("default", {}), ("default, LUT path", dict(lut)),
           ("float32", {"lut_dtype": "float32", **lut}), ("float16", {"lut_dtype": "float16", **lut}),
           ("int8 old (group, raw)", {"lut_dtype": "int8", "lut_scale_block": group_size, "lut_centered": False,
                                      "lut_fine_planes": 0,
                                      **lut})]
    for b in sorted(set(min(b, group_size) for b in blocks), reverse=True):
        for r in (ratios if b < group_size else ratios[:1]):
            out.append((f"int8 centered, block {b}" + (f", ratios <= {r}" if r else ""),
                        {"lut_dtype": "int8", "lut_scale_block": b, "lut_centered": True, "lut_scale_ratio": r,
                         "lut_fine_planes": 0,
                         **lut}))
    return out


def _score(logits: np.ndarray, targets: np.ndarray):
    """(sum of NLL in float64, argmax per row) of float32 logits (rows, V)."""
    z = logits.astype(np.float64)
    mx = z.max(1, keepdims=True)
    lse = np.log(np.exp(z - mx).sum(1)) + mx[:, 0]
    return float((lse - z[np.arange(len(targets)), targets]).sum()), logits.argmax(1)


def exact_run(qm, ids: np.ndarray, window: int, stride: int, progress=False) -> dict:
    """Fake-quant (dequantized weights in torch float32): NLL and per-position argmax."""
    import torch
    from quant.torch_model import build_torch_model, fake_quant_linear
    lm = build_torch_model(qm, fake_quant_linear).eval()
    body, head = lm.get_decoder(), lm.get_output_embeddings()
    t = torch.as_tensor(ids, dtype=torch.int64)
    nll, top, t0 = 0.0, [], time.perf_counter()
    with torch.inference_mode():
        for begin, end, lo in windows(len(ids), window, stride):
            hidden = body(input_ids=t[None, begin:end]).last_hidden_state[0, lo - begin - 1:end - begin - 1]
            s, a = _score(head(hidden).float().numpy(), ids[lo:end])
            nll, top = nll + s, top + [a]
            if progress:
                print(f"[eval] exact {end}/{len(ids)}", file=sys.stderr, flush=True)
    return _result("exact (fake-quant)", {}, nll, np.concatenate(top), time.perf_counter() - t0)


def lut_run(dec, label, knobs, ids: np.ndarray, window: int, stride: int, progress=False) -> dict:
    """The LeanDecoder `dec`: every window prefilled from position 0 with all logits."""
    nll, top, t0 = 0.0, [], time.perf_counter()
    for begin, end, lo in windows(len(ids), window, stride):
        dec.reset()
        logits = dec.prefill(ids[begin:end].tolist(), all_logits=True)[lo - begin - 1:end - begin - 1]
        s, a = _score(logits, ids[lo:end])
        nll, top = nll + s, top + [a]
        if progress:
            print(f"[eval] {label} {end}/{len(ids)}", file=sys.stderr, flush=True)
    return _result(label, knobs, nll, np.concatenate(top), time.perf_counter() - t0)


def _result(label, knobs, nll, top, seconds):
    return {"label": label, "knobs": dict(knobs), "nll": nll / len(top), "ppl": math.exp(nll / len(top)),
            "tokens": int(len(top)), "seconds": round(seconds, 2), "_top": top}


def decode_seconds(decs: list, rounds: int = 5, steps: int = 16, token: int = 1) -> list:
    """Median seconds per decode step of each decoder, timed interleaved (round-robin)."""
    times = [[] for _ in decs]
    for _ in range(rounds):
        for i, d in enumerate(decs):
            d.reset()
            d.prefill([token])
            t0 = time.perf_counter()
            for _ in range(steps):
                d.decode(token)
            times[i].append((time.perf_counter() - t0) / steps)
    return [float(np.median(t)) for t in times]


def run_all(qm, ids: np.ndarray, window: int, stride: int, threads=None, blocks=(64, 32, 16),
            ratios=(0, 64), progress=False) -> list:
    """Rows for the table: exact first, then each configuration of `configs`."""
    from lutc.tuning.space import describe
    from .decoder import LeanDecoder
    ids = np.asarray(ids, np.int64).reshape(-1)
    rows = [dict(exact_run(qm, ids, window, stride, progress), _key=None)]
    base, decs = None, []
    for label, knobs in configs(_group_size(qm), blocks, ratios):
        dec = LeanDecoder(base if base is not None else qm, n_ctx=window + 1, threads=threads,
                          max_prefill=128, knobs=knobs)
        base = base if base is not None else dec.to_packed_model()       # pack once, share the arrays
        s = dec.layers[0].gu.sched_prefill
        key = tuple(sc.codegen_key for lw in (dec.layers[0].gu, dec.lm_head) for sc in lw.by_bucket.values())
        same = next((r for r in rows[1:] if r["_key"] == key), None)
        if same is not None:                # the same code as an earlier row (e.g. the default): reuse it
            row = dict(same, label=label, knobs=dict(knobs), seconds=0.0)
        else:
            row = lut_run(dec, label, knobs, ids, window, stride, progress)
        row["schedule"], row["_key"] = describe(s), key
        rows.append(row)
        decs.append(dec)
    secs = decode_seconds(decs)
    exact = rows[0]
    for r in rows:
        r["agree"] = float((r["_top"] == exact["_top"]).mean())
        r["vs_exact"] = r["ppl"] / exact["ppl"] - 1
    for r, s in zip(rows[1:], secs):
        r["decode_s"] = s
        r["rel_cost"] = s / secs[0]
    for r in rows:
        r.pop("_top")
        r.pop("_key", None)
    return rows


def _group_size(qm) -> int:
    return next(iter(qm.linears.values())).group_size


def format_table(rows: list) -> str:
    head = f"{'tables':<26} {'schedule':<44} {'perplexity':>10} {'vs exact':>9} {'top-1 agree':>11} {'decode cost':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cost = f"{r['rel_cost']:.2f}x" if "rel_cost" in r else "-"
        lines.append(f"{r['label']:<26} {r.get('schedule', 'dequantized, torch'):<44} {r['ppl']:>10.4f} "
                     f"{100 * r['vs_exact']:>+8.2f}% {100 * r['agree']:>10.2f}% {cost:>11}")
    return "\n".join(lines)
