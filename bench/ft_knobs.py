"""hlq-ft knob sweep: one block-wise quantization, then end-to-end (E2E-QP) variants on top of it, each
evaluated on a knob-selection text and the held-out texts (python -m bench.ft_knobs; results appended
to --out as JSON lines). The E2E variants equal `quantize_model(..., ft={..., "e2e_epochs": E, "e2e_lr": L})`
(finetune_e2e runs after the block-wise pass and draws from its own seeded generator; for the "kl" objective
the float teacher here is the source model's own final-norm output, which quantize_model gets from its float
block pass: the same function, up to float rounding)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch

from quant.calib import calibration_ids, eval_ids
from quant.eval import evaluate
from quant.finetune import FTConfig, finetune_e2e
from quant.model_quant import quantize_model
from quant.source import load_source_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ft_knobs", description=__doc__)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--ft", default="{}", help="block-wise FTConfig kwargs as JSON")
    p.add_argument("--e2e", default="", help="comma list of E2E variants epochs:lr[:ce|kl], each on the "
                                             "block-wise result (objective: ce, the default, or kl)")
    p.add_argument("--text", action="append", default=[], help="evaluation text (repeatable); 'pydoc' = held-out 15%%")
    p.add_argument("--select", default=None,
                   help="knob-selection text: every variant is evaluated on it, the others (--text) only for "
                        "the variant with the lowest perplexity on it")
    p.add_argument("--calib", default=None, help="calibration: a text file or builtin:mix (default: the pydoc corpus)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    src, tok = load_source_model("smollm2-135m")
    texts = {t: eval_ids(tok, None if t == "pydoc" else t, args.max_tokens)[0] for t in args.text}
    sel = {args.select: eval_ids(tok, args.select, args.max_tokens)[0]} if args.select else {}
    variants = []

    def report(label, qm, extra, on=None):
        row = {"label": label, "bits": args.bits, "group_size": args.group_size, **extra,
               "load_avg_1min": round(os.getloadavg()[0], 2), "ppl": {}}
        if on is None:
            on = sel or texts
            variants.append((row, qm))
        for t, ids in on.items():
            row["ppl"][os.path.basename(t)] = round(evaluate(qm, tokens=ids, window=1024, stride=512)["ppl"], 4)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    ft = json.loads(args.ft)
    cpu0 = time.process_time()
    # block-wise only (no e2e pass, also where BITS_DEFAULTS has one): the e2e variants come below
    qm = quantize_model(src, args.bits, args.group_size, "hlq-ft", tokenizer=tok, calib=args.calib,
                        ft={**ft, "e2e_epochs": 0})
    report("block-wise " + json.dumps(ft) + (f" calib {args.calib}" if args.calib else ""), qm, {"ft": qm.meta["ft"], "quant_cpu_seconds": qm.meta["cpu_seconds"]})
    calib, _ = calibration_ids(tok, args.calib, 32, 512, 0)
    teacher = None
    for v in filter(None, args.e2e.split(",")):
        e, lr, loss = (v.split(":") + ["ce"])[:3]
        cfg = FTConfig.for_bits(args.bits, **{**ft, "e2e_epochs": int(e), "e2e_lr": float(lr), "e2e_loss": loss})
        c0 = time.process_time()
        if loss == "kl" and teacher is None:
            with torch.no_grad():
                teacher = (torch.cat([src.model(input_ids=calib[i:i + 8]).last_hidden_state
                                      for i in range(0, len(calib), 8)]), src.lm_head.weight.detach())
        new, info = finetune_e2e(qm, calib, cfg, teacher=teacher)
        report(f"+ e2e {e}:{lr}:{loss}", dataclasses.replace(qm, linears=new),
               {"e2e": info, "e2e_cpu_seconds": round(time.process_time() - c0, 1)})
    if sel:
        row, qm = min(variants, key=lambda v: v[0]["ppl"][os.path.basename(args.select)])
        report("selected: " + row["label"], qm, {}, on=texts)
    print(f"total cpu-s {time.process_time() - cpu0:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
