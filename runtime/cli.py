"""`lutc generate` and `lutc eval`: the runtime's CLI plugin (entry point "lutc.commands")."""
from __future__ import annotations

import json
import os
import sys
import time

from lutc.errors import UsageError

from .cli_args import check_threads, threads_arg


def register(subparsers):
    p = subparsers.add_parser("generate", help="generate text from a quantized model with lutc kernels")
    p.add_argument("model", metavar="MODEL_OR_DIR", help="a quantized checkpoint folder, or smollm2-135m")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=threads_arg, default="auto",
                   help="native threads, or 'auto' (default): measure 1..cores during decoding, use the fastest")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ctx", type=int, default=None, help="context length (default: min(model max, 2048))")
    p.add_argument("--bits", type=int, default=4, help="for a bundled model: weight bits (default 4)")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--method", default="hlq", help="for a bundled model: quantization method")
    p.add_argument("--lut-dtype", choices=("int8", "float16", "float32"), default=None,
                   help="table precision (default: the tuned/default schedule's)")
    p.set_defaults(fn=cmd_generate)
    e = subparsers.add_parser("eval", help="perplexity of a checkpoint or a source model (sliding window)")
    e.add_argument("model", help='a lutc checkpoint directory, "smollm2-135m", a .gguf file or an HF directory')
    e.add_argument("--text", default=None, help="UTF-8 text file (default: held-out part of the built-in corpus)")
    e.add_argument("--mode", choices=("fake", "lut", "all"), default="fake",
                   help="fake: dequantized weights in torch; lut: lutc LUT kernels; all (a checkpoint): one table, "
                        "exact (fake-quant) vs each table precision and scale block through the native "
                        "decoder: perplexity, top-1 agreement, decode cost")
    e.add_argument("--lut-dtype", choices=("int8", "float16", "float32"), default="int8")
    e.add_argument("--blocks", default="64,32,16",
                   help="--mode all: int8 table scale blocks to compare (besides one per group)")
    e.add_argument("--ratios", default="0,64",
                   help="--mode all: integer block-scale ratio limits per block (0: float block scales)")
    e.add_argument("--window", type=int, default=1024)
    e.add_argument("--stride", type=int, default=None, help="default: window / 2")
    e.add_argument("--max-tokens", type=int, default=8192, help="0: the whole text")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--quiet", action="store_true", help="no progress output")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)
    from .serve_cli import register as register_serve      # `lutc serve` (its options live with it)
    register_serve(subparsers)


def _utf8(text: str, what: str) -> str:
    """argv text that decoded as UTF-8 (Python maps invalid bytes to lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"{what} is not valid UTF-8 (byte {e.object[e.start].encode('utf-8', 'surrogateescape')!r} "
                         f"at position {e.start})") from None
    return text


def cmd_generate(args) -> int:
    from .config import UnsupportedModelError
    from .sampling import SamplingParams
    check_threads(args.threads)
    if args.ctx is not None and args.ctx < 1:
        raise UsageError(f"--ctx must be >= 1 (the context length in tokens), got {args.ctx}")
    _utf8(args.prompt, "--prompt")
    for s in args.stop:
        _utf8(s, "--stop")
    if not args.prompt.strip():
        raise UsageError("empty prompt: give some text with --prompt")
    try:
        params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                seed=args.seed, max_tokens=args.max_tokens, stop=tuple(args.stop))
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        return _run(args, params)
    except (ValueError, FileNotFoundError, UnsupportedModelError) as e:   # incl. quant.CheckpointError
        raise UsageError(str(e)) from None


def _run(args, params) -> int:
    from .generate import generate, peak_rss_mb
    from .models import load_decoder
    t0 = time.perf_counter()
    dec, tok = load_decoder(args.model, threads=args.threads, n_ctx=args.ctx, bits=args.bits,
                            group_size=args.group_size, method=args.method, lut_dtype=args.lut_dtype)
    if tok is None:
        raise ValueError(f"{args.model}: the checkpoint has no tokenizer")
    load_s = time.perf_counter() - t0

    def stream(piece):
        sys.stdout.write(piece)
        sys.stdout.flush()
    res = generate(dec, tok, args.prompt, params, chat=args.chat, stream=stream)
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(f"[lutc] load {load_s:.2f} s | prompt {res.prompt_tokens} tok, prefill {res.prefill_tps:.1f} tok/s | "
          f"generated {len(res.tokens)} tok ({res.stop_reason}), decode {res.decode_tps:.1f} tok/s | "
          f"threads {'auto, now ' if dec.auto else ''}{dec.threads} | "
          f"peak RSS {peak_rss_mb():.0f} MiB", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from quant.checkpoint import MANIFEST, load_checkpoint
    from quant.eval import evaluate
    check_threads(args.threads)
    is_ckpt = os.path.isfile(os.path.join(args.model, MANIFEST))
    if args.mode == "all" and is_ckpt:
        return _eval_all(args)
    if args.mode == "all":
        runs = [("fake", None)]
    else:
        runs = [(args.mode, args.lut_dtype)]
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    model = args.model
    if is_ckpt and (len(runs) > 1 or runs[0][0] == "lut"):
        try:
            model = load_checkpoint(args.model)
        except (ValueError, OSError) as e:
            raise UsageError(str(e)) from None
    results = []
    for mode, dt in runs:
        opts = {}
        if mode == "lut":
            from .torch_ops import lut_linear_factory        # torch only when LUT layers are asked for
            opts = dict(linear=lut_linear_factory(dt))
        try:
            r = evaluate(model, args.text, window=args.window, stride=args.stride,
                         max_tokens=args.max_tokens or None, progress=not args.quiet, **opts)
        except (ValueError, OSError) as e:
            raise UsageError(str(e)) from None
        results.append(r)
        if not args.json:
            print(f"{args.model}: {r['kind']}: perplexity {r['ppl']:.4f} over {r['tokens']} tokens of "
                  f"{r['source']} (window {r['window']}, stride {r['stride']}, {r['seconds']:.1f}s)")
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=1))
    return 0


def _eval_all(args) -> int:
    from quant.calib import eval_ids
    from quant.checkpoint import load_checkpoint
    from .evaltable import format_table, run_all
    try:
        blocks = tuple(int(b) for b in args.blocks.split(",") if b.strip())
        ratios = tuple(int(r) for r in args.ratios.split(",") if r.strip()) or (0,)
        qm = load_checkpoint(args.model)
        if qm.tokenizer_dir is None:
            raise ValueError(f"{args.model}: the checkpoint has no tokenizer")
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(qm.tokenizer_dir)
        ids, source = eval_ids(tok, args.text, args.max_tokens or None)
        stride = args.stride or max(1, args.window // 2)
        t0 = time.perf_counter()
        rows = run_all(qm, ids.numpy(), args.window, stride, threads=args.threads, blocks=blocks,
                       ratios=ratios, progress=not args.quiet)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps({"source": source, "window": args.window, "stride": stride, "rows": rows}, indent=1))
    else:
        print(f"{args.model}: {rows[0]['tokens']} tokens of {source} (window {args.window}, stride {stride}, "
              f"{time.perf_counter() - t0:.0f}s)")
        print(format_table(rows))
    return 0
