"""Serving throughput: aggregate and per-stream decode tok/s and time to first token at 1/2/4/8
concurrent streams, through the continuous-batching scheduler (engine) and through `lutc serve`'s
HTTP API (http, SmolLM2 only), next to llama-cpp-python's server on the same machine in the same run
(SmolLM2 Q4_0; the same clients, interleaved per stream count). Models: SmolLM2 W4 (the bundled
checkpoint), llama7b = LLaMA-2-7B shapes W2 (4 layers, random weights, 4-bit lm_head), llama7b-w4.

Usage: python bench/bench_serve.py [--models smollm2,llama7b] [--threads 2] [--streams 1,2,4,8]
                                   [--tokens 64] [--no-http] [--no-llama] [--quick] [--ratio-only] [--out FILE]
Writes bench/results/serve.json (serve_steps.json with --ratio-only) unless --out says otherwise. llama.cpp's server runs when
`import llama_cpp.server` works; this script never builds it.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.bench_e2e import LLAMA7B  # noqa: E402
from bench.common import RESULTS, conditions, write_json  # noqa: E402


MODELS = ("smollm2", "llama7b", "llama7b-w4")   # SmolLM2 W4 (bundled checkpoint); 7B shapes W2 / W4


def load(model, threads, slots, n_ctx):
    from runtime import LeanDecoder
    from runtime.models import load_decoder, load_tokenizer
    if model == "smollm2":
        return load_decoder("smollm2-135m", threads=threads, n_ctx=n_ctx, slots=slots, progress=False)
    if model not in MODELS:
        raise SystemExit(f"unknown model {model!r}: expected one of {', '.join(MODELS)}")
    from runtime._testing import llama_config, random_qmodel
    bits = 4 if model == "llama7b-w4" else 2
    qm = random_qmodel(llama_config(**LLAMA7B), bits, 128, seed=bits, lm_head_bits=4)
    dec = LeanDecoder(qm, n_ctx=n_ctx, threads=threads, slots=slots)
    return dec, load_tokenizer(dec, "smollm2-135m")          # SmolLM2's tokenizer: same vocabulary size


def prompts(n, length, vocab, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return [[1] + rng.integers(100, min(vocab, 40000), length - 1).tolist() for _ in range(n)]


def run_engine(sched, reqs_prompts, tokens):
    """Submit all prompts at once, step until done; per-step times by (decode rows, prefill rows)."""
    from runtime.sampling import SamplingParams
    reqs = [sched.submit(p, SamplingParams(max_tokens=tokens)) for p in reqs_prompts]
    steps = []
    while not all(r.finish_reason for r in reqs):
        dec_rows = sum(1 for r in sched.running if r.next_token is not None)
        t = time.perf_counter()
        rows = sched.step()
        steps.append((dec_rows, rows - dec_rows, time.perf_counter() - t))
    return reqs, steps


def engine_streams(sched, dec, streams, tokens, rounds=3):
    """Every stream count of `streams` through the scheduler, interleaved over `rounds` (so load
    changes hit every N alike): aggregate tok/s from the median full decode step (N decode rows,
    no prefill), per-stream tok/s, TTFT and tok/s of the whole run (prefill included), medians."""
    ps = {n: prompts(n, 16, dec.cfg.vocab_size, seed=n) for n in streams}
    for n in streams:
        run_engine(sched, ps[n], 4)                             # warm-up: builds the step programs
    full, per, ttft, wall_tps = ({n: [] for n in streams} for _ in range(4))
    for _ in range(rounds):
        for n in streams:
            t0 = time.perf_counter()
            reqs, steps = run_engine(sched, ps[n], tokens)
            wall = time.perf_counter() - t0
            full[n] += [s for d, p, s in steps if d == n and p == 0]
            per[n] += [(r.completion_tokens - 1) / (r.t_done - r.t_first) for r in reqs]
            ttft[n] += [r.t_first - r.t_submit for r in reqs]
            wall_tps[n].append(sum(r.completion_tokens for r in reqs) / wall)
    out = []
    for n in streams:
        step = statistics.median(full[n])
        out.append(dict(streams=n, aggregate_tps=n / step, step_ms=1e3 * step, rounds=rounds,
                        per_stream_tps=statistics.median(per[n]), ttft_ms=1e3 * statistics.median(ttft[n]),
                        wall_tps=statistics.median(wall_tps[n])))
    for r in out:
        r["x_single"] = r["aggregate_tps"] / out[0]["aggregate_tps"]
    return out


def step_ratio(dec, streams, rounds=15, ctx_pos=32):
    """Decode steps of N rows (N sequences at position ctx_pos), interleaved across N so that load
    changes hit every N alike; median wall and process CPU time per step. With 1 thread the CPU
    time is the work of a step, the figure least disturbed by other processes."""
    rows = {n: (list(range(n)), [ctx_pos] * n, [5] * n, list(range(n))) for n in streams}
    for n in streams:                                            # warm-up (program build)
        dec.forward_batch(*rows[n])
    wall, cpu = {n: [] for n in streams}, {n: [] for n in streams}
    for _ in range(rounds):
        for n in streams:
            t, c = time.perf_counter(), time.process_time()
            dec.forward_batch(*rows[n])
            wall[n].append(time.perf_counter() - t)
            cpu[n].append(time.process_time() - c)
    out = step_stats(streams, wall, cpu, "streams")
    for r in out:
        r["aggregate_tps"], r["aggregate_tps_cpu"] = 1e3 * r["streams"] / r["step_ms"], 1e3 * r["streams"] / r["cpu_ms"]
    return out


def step_stats(counts, wall, cpu, key) -> list:
    """Per row count n (the first: the reference): median wall and CPU step in ms and "x single",
    aggregate tok/s over the first count's (n x its step / n's step), wall and CPU; wall[n] and
    cpu[n] hold step times in s; `key` names the count in each row."""
    out = [{key: n, "step_ms": 1e3 * statistics.median(wall[n]), "cpu_ms": 1e3 * statistics.median(cpu[n])}
           for n in counts]
    w1, c1 = out[0]["step_ms"], out[0]["cpu_ms"]
    for r in out:
        r["x_single"] = w1 * r[key] / r["step_ms"]
        r["x_single_cpu"] = c1 * r[key] / r["cpu_ms"]
    return out


def ttft_128(sched, dec, reps=3):
    """TTFT of a 128-token prompt: idle, and with 3 other streams decoding."""
    from runtime.sampling import SamplingParams
    long_p = prompts(reps + 1, 128, dec.cfg.vocab_size, seed=99)
    idle, loaded = [], []
    for i in range(reps + 1):
        r = sched.submit(long_p[i], SamplingParams(max_tokens=1))
        while not r.finish_reason:
            sched.step()
        if i:
            idle.append(r.t_first - r.t_submit)
    for i in range(reps + 1):
        others = [sched.submit(p, SamplingParams(max_tokens=10_000)) for p in prompts(3, 16, dec.cfg.vocab_size, i)]
        while any(o.next_token is None for o in others):
            sched.step()
        for _ in range(3):
            sched.step()
        r = sched.submit(long_p[i], SamplingParams(max_tokens=1))
        while not r.finish_reason:
            sched.step()
        if i:
            loaded.append(r.t_first - r.t_submit)
        for o in others:
            sched.cancel(o)
        sched.step()
    return dict(idle_ms=1e3 * statistics.median(idle), loaded_ms=1e3 * statistics.median(loaded),
                ratio=statistics.median(loaded) / statistics.median(idle))


def start_http(sched, tok, port=18731):
    """The FastAPI app on 127.0.0.1 (uvicorn in a thread); stopping it also stops the scheduler."""
    import uvicorn

    from runtime.server import create_app
    server = uvicorn.Server(uvicorn.Config(create_app(sched, tok, "bench"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    return server, th, port


WORDS = ["The history of", "A recipe for", "In the year 2050,", "My favourite animal is", "The best way to",
         "Once upon a time", "Scientists discovered", "The weather today"]


def http_streams(port, n, tokens, rounds=2):
    """n concurrent streaming clients (httpx) against an OpenAI-compatible server on loopback.
    Tokens are counted from the usage chunk when the server sends one, else one per text chunk;
    the last of `rounds` rounds is reported (the first warms the step programs up)."""
    import json

    import httpx
    out = [None] * n

    def client(i):
        t0 = time.perf_counter()
        first, chunks, usage = None, 0, None
        body = dict(prompt=WORDS[i % len(WORDS)], max_tokens=tokens, temperature=0, stream=True,
                    stream_options={"include_usage": True})
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", timeout=600, json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:300]!r}")
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                d = json.loads(line[6:])
                usage = d.get("usage") or usage
                if d.get("choices") and d["choices"][0].get("text"):
                    chunks += 1
                    first = first or time.perf_counter()
        count = usage["completion_tokens"] if usage else chunks
        out[i] = (first - t0, count, time.perf_counter() - first, time.perf_counter() - t0)
    for _ in range(rounds):
        ths = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        t0 = time.perf_counter()
        [t.start() for t in ths]
        [t.join() for t in ths]
        wall = time.perf_counter() - t0
    return dict(streams=n, ttft_ms=1e3 * statistics.median(o[0] for o in out),
                per_stream_tps=statistics.median((o[1] - 1) / o[2] for o in out),
                aggregate_tps=sum(o[1] for o in out) / wall, tokens=sum(o[1] for o in out))


# llama-cpp-python's server with llama_model_params.use_extra_bufts off: this build's AMX buffer type
# faults at its first tile instruction (`ldtilecfg` in ggml_backend_amx_mul_mat) on this VM; off, the
# weights run through the plain CPU Q4_0 kernels (no AMX, no repacking).
_LLAMA_SERVER = """
import runpy, sys
import llama_cpp.llama_cpp as C
_default = C.llama_model_default_params
def _params():
    p = _default()
    p.use_extra_bufts = False
    return p
C.llama_model_default_params = _params
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""
LLAMA_ENV = {"OMP_WAIT_POLICY": "passive"}   # spinning OpenMP workers collapse on a loaded 2-core host


def llama_cpp_server(threads, port=18732, n_ctx=2048):
    """llama-cpp-python's server (llama_cpp.server) on SmolLM2 Q4_0 (bench_e2e's GGUF) as a
    subprocess; requests queue (interrupt_requests off) instead of cancelling each other.
    Returns the Popen, or a reason string when it cannot run here."""
    import os
    import subprocess
    import urllib.request
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:
        return f"llama-cpp-python[server] is not importable here ({e})"
    from bench.bench_e2e import llama_file
    gguf = llama_file("smollm2", "Q4_0")
    cmd = [sys.executable, "-c", _LLAMA_SERVER, "--model", str(gguf), "--n_threads", str(threads),
           "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx), "--host", "127.0.0.1", "--port", str(port),
           "--interrupt_requests", "False", "--verbose", "False"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, **LLAMA_ENV))
    t0 = time.time()
    while time.time() - t0 < 120:
        if proc.poll() is not None:
            log.seek(0)
            return f"llama_cpp.server exited: {log.read()[-500:].decode(errors='replace')}"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    return "llama_cpp.server did not answer within 120 s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,llama7b", help=f"of {', '.join(MODELS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--no-llama", action="store_true", help="skip llama-cpp-python's server")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ratio-only", action="store_true", help="only the interleaved step-time ratios")
    ap.add_argument("--out", help="results file (default bench/results/serve.json, serve_steps.json with --ratio-only)")
    args = ap.parse_args()
    from runtime.scheduler import BatchScheduler
    streams = [int(s) for s in args.streams.split(",")]
    tokens = 16 if args.quick else args.tokens
    res = dict(conditions=conditions(), threads=args.threads, tokens=tokens, engine={}, ttft={}, http={},
               llama_cpp="not run (no HTTP phase)")
    for model in args.models.split(","):
        slots = max(streams + [4])                              # the TTFT test runs 3 + 1 sequences
        dec, tok = load(model, args.threads, slots, 512)
        sched = BatchScheduler(dec, tok, max_batch=slots, prefill_chunk=32, eos_ids=[])
        res.setdefault("step_ratio", {})[model] = {}
        for thr in sorted({1, args.threads}):
            dec.set_threads(thr)
            res["step_ratio"][model][thr] = rr = step_ratio(dec, streams, 5 if args.quick else 15)
            for r in rr:
                print(f"{model} {thr} thread(s), {r['streams']} rows/step: {r['step_ms']:.2f} ms wall "
                      f"(x{r['x_single']:.2f} single-stream tok/s), {r['cpu_ms']:.2f} ms CPU "
                      f"(x{r['x_single_cpu']:.2f})", flush=True)
        dec.set_threads(args.threads)
        if args.ratio_only:
            continue
        res["engine"][model] = engine_streams(sched, dec, streams, tokens, 1 if args.quick else 3)
        for r in res["engine"][model]:
            print(f"{model} engine {r['streams']} streams: aggregate {r['aggregate_tps']:.1f} tok/s (step "
                  f"{r['step_ms']:.2f} ms, x{r['x_single']:.2f} the first stream count's), per stream "
                  f"{r['per_stream_tps']:.1f}, TTFT {r['ttft_ms']:.0f} ms", flush=True)
        res["ttft"][model] = t = ttft_128(sched, dec, 1 if args.quick else 3)
        print(f"{model} TTFT 128-token prompt: idle {t['idle_ms']:.0f} ms, 3 streams decoding "
              f"{t['loaded_ms']:.0f} ms (x{t['ratio']:.2f})", flush=True)
        if model == "smollm2" and not args.no_http:
            sched.start()
            server, th, port = start_http(sched, tok)
            lc = "not run (--no-llama)" if args.no_llama else llama_cpp_server(args.threads)
            if isinstance(lc, str):
                res["llama_cpp"] = lc
            else:
                import llama_cpp
                res["llama_cpp"] = (f"llama-cpp-python {llama_cpp.__version__} server, SmolLM2 Q4_0 GGUF, "
                                    f"n_threads={args.threads}, requests queued (interrupt_requests=False), "
                                    f"use_extra_bufts=False (AMX faults here), {LLAMA_ENV}")
            res["http"][model], res["llama_cpp_http"] = [], []
            for n in streams:                   # interleaved: lutc, then llama.cpp, at each n
                r = http_streams(port, n, tokens)
                res["http"][model].append(r)
                print(f"{model} http {n} streams: aggregate {r['aggregate_tps']:.1f} tok/s, per stream "
                      f"{r['per_stream_tps']:.1f}, TTFT {r['ttft_ms']:.0f} ms", flush=True)
                if not isinstance(lc, str):
                    r = http_streams(18732, n, tokens)
                    res["llama_cpp_http"].append(r)
                    print(f"{model} llama.cpp server {n} streams: aggregate {r['aggregate_tps']:.1f} tok/s, "
                          f"per stream {r['per_stream_tps']:.1f}, TTFT {r['ttft_ms']:.0f} ms", flush=True)
            if not isinstance(lc, str):
                lc.terminate()
                lc.wait(30)
            server.should_exit = True
            th.join()
        del sched, dec
    res["conditions_end"] = conditions()
    write_json(pathlib.Path(args.out) if args.out else RESULTS / ("serve_steps.json" if args.ratio_only else "serve.json"),
               res)
    print(res["llama_cpp"])


if __name__ == "__main__":
    main()
