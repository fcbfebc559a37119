"""End-to-end decode/prefill tokens/s: lutc runtime vs llama.cpp (llama-cpp-python), same run, as ratios.

Usage: python bench/bench_e2e.py [--quick] [--models smollm2,llama7b] [--threads 1,2] [--no-llama]
       [--bits 4,2] [--target x86-avx2] [--models llama7b-full --load-times] [--models gqa]
       [--prefill 128] [--compare-lut-path] [--compare-old-tables] [--out FILE]
Models: smollm2 (real weights), llama7b (LLaMA-2-7B shapes, 4 layers), gqa (GQA + wide FFN, 4 layers),
llama7b-full (32 layers, vocab 32000, from bench/e2e_full.py's files).
Writes bench/results/e2e.json and bench/results/e2e.png. llama-cpp-python is optional: without it
only the lutc side and the memory roofline are measured.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import e2e_full  # noqa: E402
from bench.common import RESULTS, conditions, llama_quantize, write_json  # noqa: E402

LLAMA7B = dict(vocab=49152, hidden=4096, ffn=11008, layers=4, heads=32, kv_heads=32, theta=10000.0, tie=False,
               max_pos=4096)
# GQA and a wide FFN (LLaMA-3-8B's hidden/FFN/heads, 4 layers): a shape the tuning never saw
GQA = dict(LLAMA7B, ffn=14336, kv_heads=8)
RANDOM = {"llama7b": LLAMA7B, "gqa": GQA}           # random models written as F16 GGUFs here
PAIRS = {4: "Q4_0", 2: "Q2_K"}          # lutc bits -> llama.cpp type compared against
OLD_TABLES = dict(lut_dtype="int8", lut_scale_block=1 << 30, lut_centered=False, lut_fine_planes=0)   # pre-issue-10: one scale per group
WORK = pathlib.Path(os.environ.get("LUTC_BENCH_DIR", str(pathlib.Path.home() / ".cache" / "lutc" / "bench")))


# ------------------------------------------------------------------------------ models
def lutc_model(family, bits, group_size=128):
    """A QuantizedModel: SmolLM2's real weights (RTN, lm_head 4-bit) or a random one of RANDOM's shapes."""
    from runtime._testing import llama_config, random_qmodel
    if family == "smollm2":
        from runtime.models import load_quantized
        return load_quantized("smollm2-135m", bits=bits, group_size=group_size, method="rtn", progress=False)
    return random_qmodel(llama_config(**RANDOM[family]), bits, group_size, seed=bits, lm_head_bits=4)


def lutc_decoder(family, bits, n_ctx, threads):
    """(LeanDecoder, vocab size) of a benchmark model."""
    from runtime import LeanDecoder
    if family == e2e_full.NAME:
        dec = e2e_full.decoder(bits, n_ctx, threads)
    else:
        dec = LeanDecoder(lutc_model(family, bits), n_ctx=n_ctx, threads=threads)
    return dec, dec.cfg.vocab_size


def _smollm2_gguf():
    from quant.source import smollm2_gguf_path
    return pathlib.Path(smollm2_gguf_path())


def llama_file(family, qtype) -> pathlib.Path:
    """The GGUF llama.cpp runs: the shipped SmolLM2 Q4_1 requantized, or a random 7B-shaped F16 quantized."""
    if family == e2e_full.NAME:
        return e2e_full.llama_file(qtype)
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / f"{family}-{qtype}.gguf"
    if out.exists():
        return out
    src = _smollm2_gguf() if family == "smollm2" else _random_llama_f16(family)
    return llama_quantize(src, out, qtype, requantize=True)


def _random_llama_f16(family) -> pathlib.Path:
    """RANDOM[family]'s shapes (vocab 49152 with SmolLM2's tokenizer), random F16, written with `gguf`."""
    import gguf

    from quant.synthetic import add_smollm2_tokenizer
    path = WORK / f"{family}-F16.gguf"
    if path.exists():
        return path
    c = RANDOM[family]
    tmp = f"{path}.tmp{os.getpid()}"            # two benches may write it at once
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("random-llama2-7b-shapes")
    w.add_block_count(c["layers"])
    w.add_context_length(c["max_pos"])
    w.add_embedding_length(c["hidden"])
    w.add_feed_forward_length(c["ffn"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_rope_freq_base(c["theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(c["hidden"] // c["heads"])
    w.add_vocab_size(c["vocab"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    add_smollm2_tokenizer(w)
    rng = np.random.default_rng(0)
    rnd = lambda *s: (rng.standard_normal(s, np.float32) * 0.02).astype(np.float16)  # noqa: E731
    H, F, V = c["hidden"], c["ffn"], c["vocab"]
    w.add_tensor("token_embd.weight", rnd(V, H))
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    w.add_tensor("output.weight", rnd(V, H))
    KV = H // c["heads"] * c["kv_heads"]
    for i in range(c["layers"]):
        for n, shape in (("attn_q", (H, H)), ("attn_k", (KV, H)), ("attn_v", (KV, H)), ("attn_output", (H, H)),
                         ("ffn_gate", (F, H)), ("ffn_up", (F, H)), ("ffn_down", (H, F))):
            w.add_tensor(f"blk.{i}.{n}.weight", rnd(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(H, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(H, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def gguf_bytes_per_token(path) -> int:
    """Bytes of weights llama.cpp reads per token: every tensor except the token embedding table
    (unless it doubles as the output matrix, as in tied models)."""
    import gguf
    r = gguf.GGUFReader(str(path))
    names = {t.name for t in r.tensors}
    return int(sum(t.n_bytes for t in r.tensors if t.name != "token_embd.weight" or "output.weight" not in names))


# ------------------------------------------------------------------------------ timing
def decode_steps(dec, prompt, n_decode):
    """(median wall, median thread CPU time) in s of n_decode greedy decode steps of a lutc decoder
    after a fresh prefill of prompt."""
    dec.reset()
    dec.prefill(prompt)
    tok, ts, cs = 5, [], []
    for _ in range(n_decode):
        t, c = time.perf_counter(), time.thread_time()
        logits = dec.decode(tok)
        ts.append(time.perf_counter() - t)
        cs.append(time.thread_time() - c)
        tok = int(np.argmax(logits))
    return float(np.median(ts)), float(np.median(cs))


def time_lutc(dec, prompt, n_decode, prefill_ids):
    """(median decode step, prefill, median decode step CPU time of the calling thread, prefill's) in s."""
    step, step_cpu = decode_steps(dec, prompt, n_decode)
    dec.reset()
    t, c = time.perf_counter(), time.thread_time()
    dec.prefill(prefill_ids)
    return step, time.perf_counter() - t, step_cpu, time.thread_time() - c


def time_llama(llm, prompt, n_decode, prefill_ids):
    """As time_lutc. (The thread CPU times mean the same as lutc's at 1 thread, where both compute
    on the calling thread.)"""
    llm.reset()
    llm.eval(prompt)
    tok, ts, cs = 5, [], []
    for _ in range(n_decode):
        t, c = time.perf_counter(), time.thread_time()
        llm.eval([tok])
        ts.append(time.perf_counter() - t)
        cs.append(time.thread_time() - c)
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    llm.reset()
    t, c = time.perf_counter(), time.thread_time()
    llm.eval(prefill_ids)
    return float(np.median(ts)), time.perf_counter() - t, float(np.median(cs)), time.thread_time() - c


def python_overhead(qm, reps=200):
    """Per-token Python cost of the native engine: decode() with its native Program emptied (so only
    Python and the one ctypes call remain), next to a full step and the numpy-glue engine's step."""
    from runtime import LeanDecoder
    nat = LeanDecoder(qm, n_ctx=64, threads=1)
    npy = LeanDecoder(qm, n_ctx=64, threads=1, engine="numpy")
    med = lambda a: float(np.median(a)) * 1e6  # noqa: E731

    full, numpy_full = [], []
    for rnd in range(3):                          # interleaved steady-state decode steps
        for dec in (nat, npy):
            dec.reset()
            dec.prefill([1, 2, 3, 4])
        for _ in range(20):
            for dec, sink in ((nat, full), (npy, numpy_full)):
                t = time.perf_counter()
                dec.decode(5)
                sink.append(time.perf_counter() - t)
    prog = next(p for key, p in nat._programs.items() if key[:2] == (1, 1))   # the decode step
    n_launch, prog._n = prog._n, 0               # keep the Python path and the ctypes call, skip the kernels
    py = []
    try:
        for _ in range(reps // 20):                # back-to-back decode() calls, as in generation
            t = time.perf_counter()
            for _ in range(1000):
                nat.pos = 8
                nat.decode(5)
            py.append((time.perf_counter() - t) / 1000)
    finally:
        prog._n = n_launch
    logits = np.zeros(qm.config["vocab_size"], np.float32)
    t = time.perf_counter()
    for _ in range(1000):
        int(np.argmax(logits))
    return dict(native_step_us=med(full), python_per_token_us=med(py), numpy_engine_step_us=med(numpy_full),
                greedy_argmax_us=(time.perf_counter() - t) * 1e3, native_launches_per_token=n_launch,
                numpy_engine_launches_per_token=8 * len(npy.layers) + 2)


def _stream_kernel():
    """A lutc DSL kernel that reads a float32 array once (partial sums per chunk): the roofline probe."""
    import lutc
    import lutc.language as tl

    @lutc.jit
    def stream_sum(x, out, CH: tl.constexpr):
        base = x + tl.program_id(0) * CH
        a0 = tl.zeros((64,), tl.float32)
        a1 = tl.zeros((64,), tl.float32)
        for i in range(0, CH, 128):
            a0 += tl.load(base + i + tl.arange(0, 64))
            a1 += tl.load(base + i + 64 + tl.arange(0, 64))
        tl.store(out + tl.program_id(0), tl.sum(a0 + a1))
    return stream_sum


def bandwidth(threads_list, reps, mb=512, cpu_out=None):
    """Streaming-read GB/s per thread count (best of `reps`: the roofline is an upper bound), measured
    with lutc's own thread pool on `mb` MB. With cpu_out (a dict), cpu_out[1] gets the 1-thread
    figure per second of thread CPU time (robust to preemption on a loaded machine)."""
    ch = 1 << 16
    x = np.ones((mb << 20) // 4, np.float32)
    out = np.zeros(x.size // ch, np.float32)
    kern = _stream_kernel()
    res = {}
    for t in threads_list:
        samples, cpu = [], []
        for _ in range(reps + 1):
            t0, c0 = time.perf_counter(), time.thread_time()
            kern[(out.size,)](x, out, CH=ch, threads=t)
            samples.append(x.nbytes / (time.perf_counter() - t0) / 1e9)
            cpu.append(x.nbytes / max(time.thread_time() - c0, 1e-9) / 1e9)
        res[t] = float(np.max(samples[1:]))
        if t == 1 and cpu_out is not None:          # per CPU second of the one thread: preemption excluded
            cpu_out[1] = max(cpu_out.get(1, 0.0), float(np.max(cpu[1:])))
    return res


# ------------------------------------------------------------------------------ main
def run(args):
    if args.target != "host":           # before any kernel is compiled: every "host" kernel uses it
        os.environ["LUTC_HOST_TARGET"] = args.target
    from runtime import LeanDecoder
    has_llama = not args.no_llama and importlib.util.find_spec("llama_cpp") is not None
    threads = [int(t) for t in args.threads.split(",")]
    out = dict(benchmark="e2e", conditions=conditions(), llama_cpp=None, rows=[], target=args.target,
               protocol=dict(prompt_tokens=args.prompt, decode_tokens=args.decode, prefill_tokens=args.prefill,
                             rounds=args.rounds, stat="median over rounds of the median step time"))
    if has_llama:
        import llama_cpp
        out["llama_cpp"] = llama_cpp.__version__
        if getattr(args, "llama_amx", ""):
            out["llama_cpp_note"] = "AMX backend off (bench/llama_noamx.py): it faults on this host"
    print(f"measuring bandwidth ({threads} threads)...", flush=True)
    bw_cpu = out["bandwidth_cpu_GBs"] = {}
    out["bandwidth_GBs"] = bw = bandwidth(threads, 5, cpu_out=bw_cpu)
    if args.target != "host":
        out["target"] = use_target(args.target)
    for family in args.models.split(","):
        for bits in [int(b) for b in args.bits.split(",")]:
            qtype = PAIRS[bits]
            print(f"[{family}] loading W{bits} (lutc) and {qtype} (llama.cpp)...", flush=True)
            if family == "smollm2" and bits == 4 and not args.no_overhead:
                out["python_overhead"] = python_overhead(lutc_model(family, bits))
                print(f"python overhead per token: {out['python_overhead']}", flush=True)
            t0 = time.perf_counter()
            dec, vocab = lutc_decoder(family, bits, args.prompt + args.decode + args.prefill + 8, threads[0])
            load_s = time.perf_counter() - t0
            rng = np.random.default_rng(0)              # the same ids for every model that has them
            prompt = [int(t) for t in rng.integers(3, min(vocab, 40000), args.prompt)]
            prefill_ids = [int(t) for t in rng.integers(3, min(vocab, 40000), args.prefill)]
            old = None
            if args.compare_old_tables:          # the pre-issue-10 int8 tables, same packed weights
                old = LeanDecoder(dec.to_packed_model(), n_ctx=dec.n_ctx, threads=threads[0], knobs=OLD_TABLES)
            lutpath = None
            if args.compare_lut_path:            # every M bucket on the LUT path (prefill before the dot path)
                lutpath = LeanDecoder(dec.to_packed_model(), n_ctx=dec.n_ctx, threads=threads[0],
                                      knobs={"path": "lut"})
            bw_now = bandwidth(threads, 5, cpu_out=bw_cpu)          # re-measured next to this model's timings
            bw = {t: max(bw[t], bw_now[t]) for t in threads}
            out["bandwidth_GBs"] = bw
            llms, gpath = {}, None
            if has_llama:
                from llama_cpp import Llama
                gpath = llama_file(family, qtype)
                llms = {t: Llama(model_path=str(gpath), n_threads=t, n_threads_batch=t, n_ctx=512, n_batch=512,
                                 verbose=False) for t in threads}
            samples = {t: dict(lutc=[], llama=[], old=[], lutpath=[]) for t in threads}
            for _ in range(args.rounds):                    # interleaved: drift hits both sides alike
                for t in threads:
                    dec.set_threads(t)
                    samples[t]["lutc"].append(time_lutc(dec, prompt, args.decode, prefill_ids))
                    if old is not None:
                        old.set_threads(t)
                        samples[t]["old"].append(time_lutc(old, prompt, args.decode, prefill_ids))
                    if lutpath is not None:
                        lutpath.set_threads(t)
                        samples[t]["lutpath"].append(time_lutc(lutpath, prompt, args.decode, prefill_ids))
                    if has_llama:
                        samples[t]["llama"].append(time_llama(llms[t], prompt, args.decode, prefill_ids))
            for t in threads:
                row = dict(model=family, lutc=f"W{bits}g128", llama_type=qtype, threads=t,
                           lutc_bytes_per_token=dec.weight_bytes, bandwidth_GBs=bw[t], lutc_load_s=load_s,
                           loadavg=list(os.getloadavg()))
                lt = np.array(samples[t]["lutc"])
                row["lutc_decode_tps"] = 1.0 / float(np.median(lt[:, 0]))
                row["lutc_prefill_tps"] = args.prefill / float(np.median(lt[:, 1]))
                row["lutc_roofline_tps"] = bw[t] * 1e9 / dec.weight_bytes
                row["lutc_roofline_frac"] = row["lutc_decode_tps"] / row["lutc_roofline_tps"]
                row["lutc_decode_cpu_tps"] = 1.0 / float(np.median(lt[:, 2]))      # meaningful at 1 thread
                if t == 1 and 1 in bw_cpu:
                    row["lutc_roofline_frac_cpu"] = row["lutc_decode_cpu_tps"] * dec.weight_bytes / (bw_cpu[1] * 1e9)
                if old is not None:
                    ot = np.array(samples[t]["old"])
                    row["old_tables_decode_tps"] = 1.0 / float(np.median(ot[:, 0]))
                    row["old_tables_prefill_tps"] = args.prefill / float(np.median(ot[:, 1]))
                    row["decode_vs_old_tables"] = row["lutc_decode_tps"] / row["old_tables_decode_tps"]
                if lutpath is not None:
                    pt = np.array(samples[t]["lutpath"])
                    row["lut_path_prefill_tps"] = args.prefill / float(np.median(pt[:, 1]))
                    row["prefill_vs_lut_path"] = row["lutc_prefill_tps"] / row["lut_path_prefill_tps"]
                if has_llama:
                    ll = np.array(samples[t]["llama"])
                    row["llama_decode_tps"] = 1.0 / float(np.median(ll[:, 0]))
                    row["llama_prefill_tps"] = args.prefill / float(np.median(ll[:, 1]))
                    row["llama_bytes_per_token"] = gguf_bytes_per_token(gpath)
                    row["decode_ratio"] = row["lutc_decode_tps"] / row["llama_decode_tps"]
                    row["prefill_ratio"] = row["lutc_prefill_tps"] / row["llama_prefill_tps"]
                    row["llama_decode_cpu_tps"] = 1.0 / float(np.median(ll[:, 2]))
                    row["decode_cpu_ratio"] = row["lutc_decode_cpu_tps"] / row["llama_decode_cpu_tps"]
                    row["prefill_cpu_ratio"] = float(np.median(ll[:, 3])) / float(np.median(lt[:, 3]))
                out["rows"].append(row)
                _print_row(row)
            del dec, llms, old, lutpath
            if family == e2e_full.NAME and args.load_times:
                out.setdefault("load_times", {})[f"W{bits}"] = lt = e2e_full.load_times(bits)
                print(f"lutc start-up W{bits} (fresh processes): {lt}", flush=True)
    out["conditions"]["loadavg_end"] = list(os.getloadavg())
    return out


def use_target(name):
    """The named target every kernel of this process is compiled for ($LUTC_HOST_TARGET, set by
    run() before any kernel is compiled); its code must run on this machine (e.g. x86-avx2 on an
    AVX-512 host)."""
    from lutc.backend.target import get_target
    from lutc.backend.toolchain import runs_here
    tgt = get_target("host")
    if tgt.name != name or not runs_here(tgt):
        raise SystemExit(f"--target {name}: its code does not run on this machine (host target is {tgt.name})")
    return dict(name=tgt.name, cpu=tgt.cpu)


def _print_row(r):
    s = (f"{r['model']:8s} {r['lutc']:8s} vs {r['llama_type']:5s} t={r['threads']}: decode lutc "
         f"{r['lutc_decode_tps']:7.1f} tok/s ({100 * r['lutc_roofline_frac']:.0f}% of roofline "
         f"{r['lutc_roofline_tps']:.0f})  prefill {r['lutc_prefill_tps']:7.1f} tok/s")
    if "old_tables_decode_tps" in r:
        s += (f" | old int8 tables decode {r['old_tables_decode_tps']:7.1f} (new/old x{r['decode_vs_old_tables']:.3f})"
              f" prefill {r['old_tables_prefill_tps']:7.1f}")
    if "lut_path_prefill_tps" in r:
        s += f" | LUT-path prefill {r['lut_path_prefill_tps']:7.1f} (dot/lut x{r['prefill_vs_lut_path']:.2f})"
    if "llama_decode_tps" in r:
        s += (f" | llama.cpp decode {r['llama_decode_tps']:7.1f} prefill {r['llama_prefill_tps']:7.1f} | "
              f"ratio decode x{r['decode_ratio']:.2f} prefill x{r['prefill_ratio']:.2f}")
        if r["threads"] == 1:
            s += f" | CPU-time ratio decode x{r['decode_cpu_ratio']:.2f} prefill x{r['prefill_cpu_ratio']:.2f}"
    print(s, flush=True)


def markdown(out) -> str:
    """The results as markdown tables (what docs/runtime.md shows)."""
    c, rows = out["conditions"], out["rows"]
    lines = [f"Run {c['date']}, {c['cpu']} ({c['ncpu']} cores), llama-cpp-python {out.get('llama_cpp')}, "
             f"1-min load average {c['loadavg_start'][0]:.1f} at start and {c.get('loadavg_end', [0])[0]:.1f} "
             f"at end; bandwidth (lutc stream probe) " +
             ", ".join(f"{t} thread(s) {v:.1f} GB/s" for t, v in out["bandwidth_GBs"].items()) + ".", "",
             "| model | lutc vs llama.cpp | threads | decode lutc | decode llama.cpp | decode ratio | "
             "prefill lutc | prefill llama.cpp | prefill ratio | lutc MB/token | llama.cpp MB/token | "
             "lutc % of roofline | CPU time (1 thread): decode ratio, % of roofline | load |", "|" + "---|" * 14]
    for r in rows:
        g = lambda k, f="{:.1f}": f.format(r[k]) if k in r else "-"  # noqa: E731
        lines.append(f"| {r['model']} | {r['lutc']} vs {r['llama_type']} | {r['threads']} | "
                     f"{g('lutc_decode_tps')} | {g('llama_decode_tps')} | {g('decode_ratio', 'x{:.2f}')} | "
                     f"{g('lutc_prefill_tps')} | {g('llama_prefill_tps')} | {g('prefill_ratio', 'x{:.2f}')} | "
                     f"{r['lutc_bytes_per_token'] / 1e6:.1f} | "
                     f"{r['llama_bytes_per_token'] / 1e6 if 'llama_bytes_per_token' in r else float('nan'):.1f} | "
                     f"{100 * r['lutc_roofline_frac']:.0f}% | "
                     f"{g('decode_cpu_ratio', 'x{:.2f}') if r['threads'] == 1 else '-'}, "
                     f"{g('lutc_roofline_frac_cpu', '{:.0%}') if r['threads'] == 1 else '-'} | "
                     f"{r['loadavg'][0] if 'loadavg' in r else float('nan'):.1f} |")
    if isinstance(out.get("target"), dict):        # a named target (run() records "host" otherwise)
        lines.append(f"\nEvery lutc kernel compiled for the named target {out['target']['name']} "
                     f"({out['target']['cpu']}), run natively here.")
    for w, lt in out.get("load_times", {}).items():
        med = lambda k, f: float(np.median([x[f] for x in lt[k]]))  # noqa: E731
        lines.append(f"\nlutc start-up, {w} (fresh process, load_decoder to a ready decoder): first "
                     f"{lt['first']['load_s']:.1f} s, cold {med('cold', 'load_s'):.1f} s (page cache "
                     f"{'dropped' if lt['dropped'] else 'NOT dropped'}), warm {med('warm', 'load_s'):.1f} s; "
                     f"first token after load {med('warm', 'first_token_s'):.2f} s; peak RSS "
                     f"{med('warm', 'peak_rss_gb'):.1f} GB.")
    return "\n".join(lines)


def plot(out, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = out["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, kind in zip(axes, ("decode", "prefill")):
        labels = [f"{r['model']}\n{r['lutc'].split('g')[0]}/{r['llama_type']}\nt={r['threads']}" for r in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r[f"lutc_{kind}_tps"] for r in rows], 0.4, label="lutc")
        if rows and f"llama_{kind}_tps" in rows[0]:
            ax.bar(x + 0.2, [r[f"llama_{kind}_tps"] for r in rows], 0.4, label="llama.cpp")
            for i, r in enumerate(rows):
                ax.annotate(f"x{r[f'{kind}_ratio']:.2f}", (i, max(r[f"lutc_{kind}_tps"], r[f"llama_{kind}_tps"])),
                            ha="center", va="bottom", fontsize=8)
        if kind == "decode":
            ax.scatter(x - 0.2, [r["lutc_roofline_tps"] for r in rows], marker="_", s=300, c="k",
                       label="lutc memory roofline")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{kind} tokens/s ({'128-token prompt' if kind == 'prefill' else 'median step'})")
        ax.legend(fontsize=8)
    c = out["conditions"]
    fig.suptitle(f"lutc runtime vs llama.cpp — {c['cpu']}, {c['ncpu']} cores, 1-min loadavg "
                 f"{c['loadavg_start'][0]:.1f} at start, {c['loadavg_end'][0]:.1f} at end (shared machine)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2,llama7b")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens before the timed decode")
    p.add_argument("--decode", type=int, default=64, help="timed decode steps per round")
    p.add_argument("--prefill", type=int, default=128, help="prompt tokens of the prefill measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bits", default="4,2", help="lutc bit widths (4 vs Q4_0, 2 vs Q2_K)")
    p.add_argument("--target", default="host", help="compile every kernel for this named target (must run here)")
    p.add_argument("--load-times", action="store_true",
                   help=f"{e2e_full.NAME}: also time lutc start-up in fresh processes, cold (page cache dropped) and warm")
    p.add_argument("--no-overhead", action="store_true", help="skip the python_overhead section")
    p.add_argument("--quick", action="store_true", help="1 round of 16 decode steps")
    p.add_argument("--no-llama", action="store_true", help="skip llama.cpp even if it is installed")
    p.add_argument("--compare-old-tables", action="store_true",
                   help="also time the pre-issue-10 int8 tables (one scale per group, uncentered), interleaved")
    p.add_argument("--compare-lut-path", action="store_true",
                   help="also time the runtime with every M bucket on the LUT path (no int8 dot prefill)")
    p.add_argument("--out", default=str(RESULTS / "e2e.json"))
    p.add_argument("--markdown", metavar="JSON", help="print an existing result file as markdown tables, "
                   "redraw its plot, and exit")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.decode = 1, 16
    if not args.no_llama and not args.markdown and importlib.util.find_spec("llama_cpp") is not None:
        from bench.llama_noamx import reexec_without_amx
        args.llama_amx = reexec_without_amx(WORK)          # returns only once the shim is loaded
    if args.markdown:
        import json
        out = json.loads(pathlib.Path(args.markdown).read_text())
        print(markdown(out))
        plot(out, pathlib.Path(args.markdown).with_suffix(".png"))
        return 0
    out = run(args)
    write_json(args.out, out)
    print(markdown(out))
    png = pathlib.Path(args.out).with_suffix(".png")
    try:
        plot(out, png)
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
