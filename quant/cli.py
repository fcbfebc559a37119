"""`lutc quantize` and `lutc eval` subcommands (a lutc CLI plugin: register(subparsers))."""

from __future__ import annotations

import json

__all__ = ["register", "USER_ERRORS"]

# What these subcommands raise for a problem the user can fix (a missing model, a bad checkpoint,
# an unwritable --out...): lutc.cli.main, which dispatches them, reports those as one line and
# exit code 2. (quant does not import lutc, so it cannot raise lutc's UsageError.)
USER_ERRORS = (ValueError, OSError)


def cmd_quantize(args) -> int:
    from .checkpoint import save_checkpoint
    from .model_quant import quantize_model
    qm = quantize_model(args.model, args.bits, args.group_size, args.method, calib=args.calib,
                        lm_head_bits=args.lm_head_bits, lm_head_group_size=args.lm_head_group_size,
                        nsamples=args.nsamples, seqlen=args.seqlen, progress=not args.quiet,
                        act_order=args.act_order, damp=args.damp)
    out = save_checkpoint(qm, args.out)
    print(f"wrote {out}: {qm.meta['method']} W{qm.meta['bits']} g{qm.meta['group_size']} "
          f"(lm_head W{qm.meta['lm_head_bits']} g{qm.meta['lm_head_group_size']}), "
          f"{len(qm.linears)} quantized linears, {qm.meta['seconds']:.1f}s")
    return 0


def cmd_eval(args) -> int:
    from .eval import evaluate
    from .checkpoint import MANIFEST
    import os
    is_ckpt = os.path.isfile(os.path.join(args.model, MANIFEST))
    if args.mode == "all":
        runs = [("fake", "int8"), ("lut", "float32"), ("lut", "int8")] if is_ckpt else [("fake", "int8")]
    else:
        runs = [(args.mode, args.lut_dtype)]
    model = args.model
    if is_ckpt and len(runs) > 1:
        from .checkpoint import load_checkpoint
        model = load_checkpoint(args.model)
    results = []
    for mode, dt in runs:
        r = evaluate(model, args.text, mode=mode, lut_dtype=dt, window=args.window, stride=args.stride,
                     max_tokens=args.max_tokens or None, threads=args.threads, progress=not args.quiet)
        results.append(r)
        if not args.json:
            print(f"{args.model}: {r['kind']}: perplexity {r['ppl']:.4f} over {r['tokens']} tokens of "
                  f"{r['source']} (window {r['window']}, stride {r['stride']}, {r['seconds']:.1f}s)")
    if len(results) == 3 and not args.json:
        fake, f32, i8 = (r["ppl"] for r in results)
        print(f"lut float32 tables vs fake-quant: {100 * (f32 / fake - 1):+.3f}%; "
              f"int8 tables vs float32 tables: {100 * (i8 / f32 - 1):+.3f}%")
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=1))
    return 0


def register(subparsers) -> None:
    from .model_quant import MODEL_METHODS
    q = subparsers.add_parser("quantize", help="quantize a LLaMA-family model into a lutc checkpoint directory")
    q.add_argument("model", help='"smollm2-135m", a .gguf file or a Hugging Face model directory')
    q.add_argument("--bits", type=int, required=True, choices=(1, 2, 3, 4))
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument("--method", choices=MODEL_METHODS, default="hlq-gptq")
    q.add_argument("--out", required=True, help="checkpoint directory (written atomically)")
    q.add_argument("--lm-head-bits", type=int, default=4, choices=(1, 2, 3, 4))
    q.add_argument("--lm-head-group-size", type=int, default=128)
    q.add_argument("--calib", default=None, help="calibration text file (default: built-in pydoc corpus)")
    q.add_argument("--nsamples", type=int, default=32)
    q.add_argument("--seqlen", type=int, default=512)
    q.add_argument("--act-order", action="store_true", help="GPTQ act-order (static groups)")
    q.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, fraction of mean(diag H)")
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.set_defaults(fn=cmd_quantize)
    e = subparsers.add_parser("eval", help="perplexity of a checkpoint or a source model (sliding window)")
    e.add_argument("model", help='a lutc checkpoint directory, "smollm2-135m", a .gguf file or an HF directory')
    e.add_argument("--text", default=None, help="UTF-8 text file (default: held-out part of the built-in corpus)")
    e.add_argument("--mode", choices=("fake", "lut", "all"), default="fake",
                   help="fake: dequantized weights in torch; lut: lutc LUT kernels; all: fake, lut f32, lut int8")
    e.add_argument("--lut-dtype", choices=("int8", "float16", "float32"), default="int8")
    e.add_argument("--window", type=int, default=1024)
    e.add_argument("--stride", type=int, default=None, help="default: window / 2")
    e.add_argument("--max-tokens", type=int, default=8192, help="0: the whole text")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--quiet", action="store_true", help="no progress output")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)
