"""GEMV (M=1) benchmark: lutc LUT-GEMM vs torch/numpy float32 on LLaMA-2-7B shapes, hot and streaming, vs the measured DRAM roofline."""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common as C  # noqa: E402
import lutc  # noqa: E402
import quant  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LLAMA2_7B = "4096x4096,11008x4096,4096x11008"   # N x K of q/k/v/o, gate/up, down
ROUNDS = 5          # each method's repeats are split into this many interleaved rounds
IDLE_S = 0.2        # pause after each round so BLAS/OpenMP worker threads stop spinning
_WARNED: list = []
ERR_TOL = 0.05      # max |y - ref| / max |ref| above which a result is flagged as suspicious


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", default=LLAMA2_7B, help="comma-separated NxK list (default: LLaMA-2-7B)")
    ap.add_argument("--bits", default="2,3,4", help="weight bits, comma-separated")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=300, help="timed calls per method and thread count")
    ap.add_argument("--stream-mb", type=int, default=512, help="MB read per thread by the roofline probe")
    ap.add_argument("--quick", action="store_true", help="smoke test: 4096x4096, W2, few repeats")
    ap.add_argument("--out", default=str(C.RESULTS / "gemv.json"), help="JSON path; the PNG goes next to it")
    a = ap.parse_args(argv)
    if a.quick:
        a.shapes, a.bits, a.reps = "4096x4096", "2", min(a.reps, 40)
    a.shapes = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",")]
    a.bits = [int(b) for b in a.bits.split(",")]
    a.threads = [int(t) for t in a.threads.split(",")]
    return a


def rotor(items):
    """A zero-arg function returning the items round-robin (a fresh copy on every call)."""
    return itertools.cycle(items).__next__


def pick_schedule(bits, gs, N, K):
    """lutc.ops.choose_schedule (what lutc.ops.lut_gemm runs); the default if the tuner is broken."""
    try:
        return lutc.ops.choose_schedule(bits, gs, 1, N, K), "choose_schedule"
    except ImportError as e:
        if not _WARNED:
            print(f"WARNING choose_schedule failed ({e}); using lutc.ops.default_schedule", file=sys.stderr)
            _WARNED.append(e)
        return lutc.ops.default_schedule(bits, gs, 1), f"default_schedule (choose_schedule: {e})"


def prepare_shape(N, K, args, target_bytes, rng):
    """Weights, activations, packed lutc copies and fp32 copies for one shape (quantization untimed)."""
    x = rng.standard_normal((1, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32)
    n_fp = max(1, math.ceil(target_bytes / w.nbytes))
    fp = [w] + [w.copy() for _ in range(n_fp - 1)]
    per_bits = {}
    for bits in args.bits:
        qw = quant.quantize(w, bits, group_size=args.group_size, method="rtn")
        sched, src = pick_schedule(bits, args.group_size, N, K)
        kern = lutc.compile(sched)
        packed = kern.pack(qw)
        ref = x @ qw.dequantize().T
        y = kern(x, packed, threads=1)
        err = float(np.abs(y - ref).max() / np.abs(ref).max())
        n_cold = max(1, math.ceil(target_bytes / packed.nbytes))
        cold = [packed] + [dataclasses.replace(packed, w=packed.w.copy(), sz=packed.sz.copy())
                           for _ in range(n_cold - 1)]
        same = bool(np.array_equal(kern(x, cold[-1], threads=max(args.threads)), y))
        if err > ERR_TOL or not same:
            print(f"WARNING {N}x{K} W{bits}: rel. error vs dequantized reference {err:.3g}, "
                  f"copies/threads give identical output: {same}", file=sys.stderr)
        per_bits[bits] = dict(sched=sched, src=src, kern=kern, packed=packed, cold=cold, err=err, same=same)
        del qw
    return x, fp, per_bits


def bench_shape(th, x, fp, per_bits, reps, buf, roof):
    """Interleaved rounds of every method and of the roofline probe (samples appended to roof[th]) at
    one thread count; returns timing stats per method."""
    numpy_ok = C.set_threads(th)
    tx, tws = torch.from_numpy(x), [torch.from_numpy(a) for a in fp]
    methods = {}
    for bits, d in per_bits.items():
        k, p = d["kern"], d["packed"]
        methods[f"w{bits}_hot"] = lambda k=k, p=p: k(x, p, threads=th)
        methods[f"w{bits}_cold"] = lambda k=k, nxt=rotor(d["cold"]): k(x, nxt(), threads=th)
    nxt_t, nxt_n = rotor(tws), rotor(fp)
    methods["torch"] = lambda: F.linear(tx, nxt_t())
    methods["numpy"] = lambda: x @ nxt_n().T
    samples = {m: ([], []) for m in methods}
    per_round = max(1, math.ceil(reps / ROUNDS))
    with torch.inference_mode():
        for _ in range(ROUNDS):
            for name, fn in methods.items():
                ts, sw = C.time_calls(fn, per_round, warmup=2)
                samples[name][0].extend(ts)
                samples[name][1].extend(sw)
            roof[th]["numpy_sum"] += buf.numpy_sum(th, 1)
            roof[th]["torch_sum"] += buf.torch_sum(th, 1)
            time.sleep(IDLE_S)
    return {m: C.stats(ts, sw) for m, (ts, sw) in samples.items()}, numpy_ok


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    cond = C.conditions()
    l3 = cond["l3_bytes"]
    target_bytes = max(3 * l3, 128 << 20)
    cond.update(threads=args.threads, reps=args.reps, rounds=ROUNDS, quick=args.quick,
                cold_target_bytes=target_bytes, torch_threads_default=torch.get_num_threads(),
                threadpoolctl=C.threadpoolctl is not None)
    print(f"# {cond['cpu']} ({cond['ncpu']} cpus, L3 {l3 >> 20} MB), lutc {cond['lutc']} @ {cond['git_commit']}, "
          f"load avg {cond['loadavg_start'][0]:.2f}; cold = rotate copies totalling >= {target_bytes >> 20} MB")

    buf = C.StreamBuffer(max(args.threads), args.stream_mb)
    roof_s = {t: {"numpy_sum": buf.numpy_sum(t, 1), "torch_sum": buf.torch_sum(t, 1)} for t in args.threads}
    rng = np.random.default_rng(0)
    rows = []
    for N, K in args.shapes:
        x, fp, per_bits = prepare_shape(N, K, args, target_bytes, rng)
        for th in args.threads:
            st, numpy_ok = bench_shape(th, x, fp, per_bits, args.reps, buf, roof_s)
            for bits, d in per_bits.items():
                rows.append(dict(shape=f"{N}x{K}", N=N, K=K, bits=bits, threads=th, schedule=d["sched"].to_dict(), schedule_source=d["src"],
                                 packed_bytes=d["packed"].nbytes, cold_copies=len(d["cold"]),
                                 fp32_bytes=fp[0].nbytes, fp32_copies=len(fp), rel_err=d["err"],
                                 copies_identical=d["same"], numpy_threads_set=numpy_ok,
                                 lutc_hot=st[f"w{bits}_hot"], lutc_cold=st[f"w{bits}_cold"],
                                 torch=st["torch"], numpy=st["numpy"]))
        del x, fp, per_bits
    del buf

    roof = {}
    for t in args.threads:
        s = roof_s[t]
        med = {k: float(np.median(v)) for k, v in s.items()}
        roof[t] = dict(GBps=max(med.values()), **{f"{k}_GBps": m for k, m in med.items()},
                       samples={k: [round(v, 3) for v in vs] for k, vs in s.items()})
    for r in rows:
        gb, t = r["packed_bytes"] / 1e9, r["threads"]
        r["hot_GBps"] = gb / r["lutc_hot"]["median"]
        r["cold_GBps"] = gb / r["lutc_cold"]["median"]
        r["pct_roofline_cold"] = 100 * r["cold_GBps"] / roof[t]["GBps"]
        r["pct_roofline_hot"] = 100 * r["hot_GBps"] / roof[t]["GBps"]
        r["fp32_GBps"] = r["fp32_bytes"] / 1e9 / r["torch"]["median"]
        for lib in ("torch", "numpy"):
            r[f"speedup_vs_{lib}"] = r[lib]["median"] / r["lutc_cold"]["median"]
            r[f"speedup_vs_{lib}_hot"] = r[lib]["median"] / r["lutc_hot"]["median"]
            a, b = r[lib]["median_clean"], r["lutc_cold"]["median_clean"]
            r[f"speedup_vs_{lib}_clean"] = a / b if a and b else None

    targets = evaluate_targets(rows, roof)
    cond.update(loadavg_end=list(os.getloadavg()), wall_s=round(time.time() - t_start, 1))
    print_table(rows, roof, targets)
    out = pathlib.Path(args.out)
    C.write_json(out, dict(conditions=cond, roofline={str(t): v for t, v in roof.items()},
                           results=rows, targets=targets))
    plot(rows, roof, out.with_suffix(".png"), cond)
    print(f"# wrote {out} and {out.with_suffix('.png')} in {cond['wall_s']} s "
          f"(load avg end {cond['loadavg_end'][0]:.2f})")


def evaluate_targets(rows, roof):
    out = []
    for r in rows:
        if r["bits"] == 2 and r["shape"] == "4096x4096" and r["threads"] == 1:
            out.append(dict(name="W2 4096x4096 1 thread: lutc (streaming) >= 6x faster than torch fp32 F.linear",
                            shape=r["shape"], value=round(r["speedup_vs_torch"], 2), goal=6.0,
                            passed=r["speedup_vs_torch"] >= 6.0, value_not_preempted=r["speedup_vs_torch_clean"]))
        if r["bits"] == 2 and r["threads"] == 2:
            out.append(dict(name=f"W2 {r['shape']} 2 threads: lutc (streaming) >= 50% of the 2-thread roofline",
                            shape=r["shape"], value=round(r["pct_roofline_cold"], 1), goal=50.0,
                            passed=r["pct_roofline_cold"] >= 50.0))
    return out


def print_table(rows, roof, targets):
    print("# roofline (streaming read, median GB/s): " + ", ".join(
        f"{t} thr {v['GBps']:.1f} (numpy {v['numpy_sum_GBps']:.1f}, torch {v['torch_sum_GBps']:.1f})"
        for t, v in roof.items()))
    hdr = (f"{'shape':>11} {'W':>2} {'thr':>3} {'MB':>5} | {'hot ms':>6} {'p10-p90':>11} {'GB/s':>5} | "
           f"{'cold ms':>7} {'p10-p90':>11} {'GB/s':>5} {'%roof':>5} | {'torch ms':>8} {'numpy ms':>8} | "
           f"{'x torch':>7} {'x numpy':>7} {'err':>6}")
    print(hdr + "\n" + "-" * len(hdr))
    ms = lambda s: f"{s['median'] * 1e3:6.3f} {s['p10'] * 1e3:5.3f}-{s['p90'] * 1e3:5.3f}"  # noqa: E731
    for r in rows:
        print(f"{r['shape']:>11} {r['bits']:>2} {r['threads']:>3} {r['packed_bytes'] / 1e6:5.1f} | "
              f"{ms(r['lutc_hot'])} {r['hot_GBps']:5.1f} | {' ' + ms(r['lutc_cold'])} {r['cold_GBps']:5.1f} "
              f"{r['pct_roofline_cold']:5.1f} | {r['torch']['median'] * 1e3:8.3f} {r['numpy']['median'] * 1e3:8.3f} | "
              f"{r['speedup_vs_torch']:7.2f} {r['speedup_vs_numpy']:7.2f} {r['rel_err']:6.3f}")
    for t in targets or [dict(name="targets: not evaluated (W2 4096x4096 / 2 threads not in this run)", passed=None)]:
        verdict = "n/a " if t["passed"] is None else ("PASS" if t["passed"] else "FAIL")
        clean = t.get("value_not_preempted")
        print(f"{verdict} {t['name']}" + (f": {t['value']} (goal {t['goal']})" if "value" in t else "")
              + (f"; {clean:.2f} over calls not preempted" if clean else ""))
    pre = {m: np.mean([r[m]["preempted_frac"] for r in rows]) for m in ("lutc_hot", "lutc_cold", "torch", "numpy")}
    print("# share of calls during which another process preempted one of ours: "
          + ", ".join(f"{m} {100 * v:.0f}%" for m, v in pre.items()))


def plot(rows, roof, path, cond):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    threads = sorted({r["threads"] for r in rows})
    cats = list(dict.fromkeys((r["shape"], r["bits"]) for r in rows))
    by = {(r["shape"], r["bits"], r["threads"]): r for r in rows}
    xs, width = np.arange(len(cats)), 0.8 / len(threads)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(10, 1.3 * len(cats) + 4), 4.8))
    for i, t in enumerate(threads):
        off, color = xs + (i - (len(threads) - 1) / 2) * width, f"C{i}"
        get = lambda key: [by[(s, b, t)][key] if (s, b, t) in by else np.nan for s, b in cats]  # noqa: E731
        ax1.bar(off, get("hot_GBps"), width, color=color, alpha=0.3, label=f"{t} thr hot (cache)")
        ax1.bar(off, get("cold_GBps"), width, color=color, label=f"{t} thr streaming")
        ax1.axhline(roof[t]["GBps"], color=color, ls="--", lw=1, label=f"{t} thr roofline {roof[t]['GBps']:.1f}")
        ax2.bar(off, get("speedup_vs_torch"), width, color=color, label=f"{t} thr")
    ax1.axhline(0.5 * roof[max(threads)]["GBps"], color="gray", ls=":", lw=1, label="50% of max-thread roofline")
    ax2.axhline(6, color="red", ls="--", lw=1, label="6x goal (W2 4096x4096, 1 thr)")
    labels = [f"{s}\nW{b}" for s, b in cats]
    for ax, title, ylab in ((ax1, "lutc effective bandwidth of packed weights", "GB/s"),
                            (ax2, "lutc (streaming) speedup vs torch fp32 F.linear", "x")):
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylab)
        ax.legend(fontsize=7)
    fig.suptitle(f"GEMV M=1, g{rows[0]['schedule']['group_size']} - {cond['cpu']} - lutc {cond['lutc']} "
                 f"@ {cond['git_commit']} - {cond['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
