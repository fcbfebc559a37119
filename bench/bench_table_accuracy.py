"""Table-precision candidates on a checkpoint, one row at a time (issue 10): perplexity and
teacher-forced top-1 agreement of each configuration against the exact (fake-quant) path, through
the runtime's native decoder, exactly as `lutc eval --mode all` scores them (runtime/evaltable.py).

Usage: python bench/bench_table_accuracy.py CKPT TEXT OUT.json [--max-tokens 4096] [--window 512]
           [--configs 'label=knob:value,knob:value;label2=...']
The exact run is cached next to OUT (OUT.exact.npz) and each finished row is written to OUT at
once (atomically), so a long run on a loaded machine can be read, or resumed, part way."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

DEFAULT_CONFIGS = ("old=lut_scale_block:100000,lut_centered:False;"
                   "c32 float=lut_scale_block:32,lut_scale_ratio:0;c16 float=lut_scale_block:16,lut_scale_ratio:0;"
                   "c32 int=lut_scale_block:32,lut_scale_ratio:64;c16 int=lut_scale_block:16,lut_scale_ratio:64;"
                   "c8 int=lut_scale_block:8,lut_scale_ratio:64")


def parse_configs(text: str) -> list:
    out = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        label, _, spec = item.partition("=")
        knobs = {}
        for kv in filter(None, spec.split(",")):
            k, _, v = kv.partition(":")
            knobs[k] = {"True": True, "False": False}.get(v, v if not v.lstrip("-").isdigit() else int(v))
        out.append((label, knobs))
    return out


def write_atomic(path: pathlib.Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    from quant.calib import eval_ids
    from quant.checkpoint import load_checkpoint
    from runtime.decoder import LeanDecoder
    from runtime.evaltable import exact_run, lut_run
    from lutc.tuning.space import describe
    from transformers import AutoTokenizer
    qm = load_checkpoint(a.ckpt)
    ids, source = eval_ids(AutoTokenizer.from_pretrained(qm.tokenizer_dir), a.text, a.max_tokens)
    ids = np.asarray(ids.numpy(), np.int64).reshape(-1)
    out = pathlib.Path(a.out)
    cache = out.with_suffix(".exact.npz")
    if cache.exists():
        z = np.load(cache)
        exact = dict(ppl=float(z["ppl"]), _top=z["top"])
    else:
        exact = exact_run(qm, ids, a.window, a.window, progress=True)
        np.savez(cache, ppl=exact["ppl"], top=exact["_top"])
    res = json.loads(out.read_text()) if out.exists() else {"ckpt": a.ckpt, "source": source, "rows": []}
    res.update(exact_ppl=exact["ppl"], window=a.window, tokens=int(len(exact["_top"])))
    done = {r["label"] for r in res["rows"]}
    packed = None
    for label, knobs in parse_configs(a.configs):
        if label in done:
            continue
        dec = LeanDecoder(packed if packed is not None else qm, n_ctx=a.window + 1, threads=a.threads,
                          max_prefill=128, knobs=knobs)
        packed = packed if packed is not None else dec.to_packed_model()
        row = lut_run(dec, label, knobs, ids, a.window, a.window, progress=False)
        row["agree"] = float((row.pop("_top") == exact["_top"]).mean())
        row["vs_exact"] = row["ppl"] / exact["ppl"] - 1
        row["schedule"] = describe(dec.layers[0].gu.sched_decode)
        row["loadavg"] = list(os.getloadavg())
        res["rows"].append(row)
        write_atomic(out, res)
        print(f"{label:14s} {row['schedule']:40s} ppl {row['ppl']:.4f} ({100 * row['vs_exact']:+.2f}%) "
              f"top-1 {100 * row['agree']:.2f}%  [{row['seconds']:.0f}s, load {row['loadavg'][0]:.1f}]", flush=True)
        del dec


if __name__ == "__main__":
    main()
