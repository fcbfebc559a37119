"""End-to-end text generation with the lutc runtime, step by step (the same path `lutc generate` takes).

    python examples/generate.py                       # bundled SmolLM2-135M-Instruct, 4-bit, chat
    python examples/generate.py CKPT_DIR --prompt "Once upon a time" --bits 2 --threads 1

1. get a quantized model: a checkpoint folder, or the bundled model quantized on first use (cached),
2. build the lean decoder: weights are packed for lutc kernels (and kept in the pack cache, so later
   starts memory-map them), compiled kernels come from lutc's disk cache,
3. encode the prompt (chat template), prefill, then sample and decode token by token, streaming.
"""
from __future__ import annotations

import argparse
import sys
import time

from runtime import SamplingParams, generate
from runtime.generate import peak_rss_mb
from runtime.models import checkpoint_dir, load_decoder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--prompt", default="Write a haiku about lookup tables.")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    ckpt = checkpoint_dir(args.model, bits=args.bits, group_size=128, method="hlq")  # 1. quantized weights
    decoder, tokenizer = load_decoder(ckpt, threads=args.threads)                    # 2. packed + compiled
    print(f"loaded in {time.perf_counter() - t0:.1f} s, {decoder.weight_bytes / 2**20:.0f} MiB of packed "
          f"weights, {decoder.threads} threads", file=sys.stderr)

    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                            max_tokens=args.max_tokens)
    result = generate(decoder, tokenizer, args.prompt, params, chat=True,            # 3. generate, streaming
                      stream=lambda piece: print(piece, end="", flush=True))
    print()
    print(f"prefill {result.prefill_tps:.0f} tok/s ({result.prompt_tokens} tokens), decode "
          f"{result.decode_tps:.0f} tok/s ({len(result.tokens)} tokens, stopped by {result.stop_reason}), "
          f"peak RSS {peak_rss_mb():.0f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
