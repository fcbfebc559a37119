"""hlq-ft block-level knob comparison: during one hlq-ft quantization, chosen blocks are fine-tuned
under several FTConfigs on the same inputs and targets; each config's fp16-rounded block MSE over all
calibration windows (and its CPU seconds) is printed as a JSON line. The model continues with the
first config's result (without the e2e pass), with rechoose on if any config has it (so that quantize_model
keeps the float weights).
python -m bench.ft_blocks --blocks 4,12,20 --configs '[{...}, ...]' --out FILE"""

from __future__ import annotations

import argparse
import json
import time

import quant.model_quant as mq
from quant.finetune import FTConfig
from quant.source import load_source_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ft_blocks", description=__doc__)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--blocks", default="4,12,20")
    p.add_argument("--configs", required=True, help="JSON list of FTConfig kwargs; the first drives the model")
    p.add_argument("--out", required=True, help="JSON lines, appended")
    args = p.parse_args(argv)
    blocks = {int(b) for b in args.blocks.split(",")}
    last = max(blocks)
    configs = json.loads(args.configs)
    orig = mq.finetune_block

    class Done(Exception):
        pass

    def wrapped(layer, qts, x, target, run, cfg, block_index=0, progress=False, y_before=None, w_float=None):
        first = orig(layer, qts, x, target, run, cfg, block_index, False, y_before, w_float)
        if block_index in blocks:
            for kw in configs:
                c0 = time.process_time()
                _, info, _ = orig(layer, qts, x, target, run, FTConfig(**kw), block_index, False, y_before, w_float)
                row = {"block": block_index, "bits": args.bits, "config": kw,
                       "cpu_s": round(time.process_time() - c0, 1),
                       **{k: info[k] for k in ("loss_before", "loss_after", "kept", "steps")},
                       "rechoose": info.get("rechoose")}
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if block_index == last:
                raise Done
        return first

    mq.finetune_block = wrapped
    src, tok = load_source_model("smollm2-135m")
    try:
        mq.quantize_model(src, args.bits, args.group_size, "hlq-ft", tokenizer=tok,
                          ft={**configs[0], "e2e_epochs": 0, "rechoose": any(c.get("rechoose") for c in configs)},
                          progress=False)
    except Done:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
