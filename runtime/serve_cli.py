"""`lutc serve`: the command-line entry of the OpenAI-compatible server (registered by runtime.cli)."""
from __future__ import annotations

import importlib.util

from lutc.errors import UsageError

from .cli_args import check_threads, threads_arg


def register(subparsers):
    s = subparsers.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching")
    s.add_argument("model", metavar="MODEL_OR_DIR", help="a quantized checkpoint folder, or smollm2-135m")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--threads", type=threads_arg, default=None, help="native threads (default: all cores)")
    s.add_argument("--max-batch", type=int, default=4, help="sequences decoded together (KV slots)")
    s.add_argument("--ctx", type=int, default=None, help="context per sequence (default: min(model max, 2048))")
    s.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    s.add_argument("--prefill-chunk", type=int, default=32,
                   help="prompt tokens per step while other sequences decode")
    s.add_argument("--model-name", default=None, help="the id /v1/models reports")
    s.add_argument("--bits", type=int, default=4, help="for a bundled model: weight bits (default 4)")
    s.add_argument("--group-size", type=int, default=128)
    s.add_argument("--method", default="hlq", help="for a bundled model: quantization method")
    s.add_argument("--lut-dtype", choices=("int8", "float16", "float32"), default=None)
    s.set_defaults(fn=cmd_serve)


def cmd_serve(args) -> int:
    if args.max_batch < 1 or args.max_queue < 0 or args.prefill_chunk < 1:
        raise UsageError("--max-batch and --prefill-chunk must be >= 1, --max-queue >= 0")
    check_threads(args.threads)
    if args.ctx is not None and args.ctx < 2:
        raise UsageError(f"--ctx must be >= 2, got {args.ctx}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise UsageError("lutc serve needs fastapi and uvicorn: pip install 'lutc[serve]'")
    from .config import UnsupportedModelError
    from .server import serve
    try:
        return serve(args.model, host=args.host, port=args.port, threads=args.threads, max_batch=args.max_batch,
                     n_ctx=args.ctx, max_queue=args.max_queue, prefill_chunk=args.prefill_chunk,
                     model_name=args.model_name, bits=args.bits, group_size=args.group_size, method=args.method,
                     lut_dtype=args.lut_dtype)
    except (ValueError, FileNotFoundError, OSError, UnsupportedModelError) as e:
        raise UsageError(str(e)) from None
