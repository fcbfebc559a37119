"""GEMV (M=1) benchmark: lutc vs torch/numpy float32 on LLaMA-2-7B shapes, hot and streaming, vs the DRAM roofline."""
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
ERR_TOL = 0.05      # max |y - ref| / max |ref| above which a result is flagged as suspicious
_WARNED: list = []


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
    """A zero-arg function returning the items round-robin (the next copy on every call)."""
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
    """Interleaved rounds of every method and of the roofline probes (samples appended to roof[th])
    at one thread count; returns timing stats per method."""
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
    samples = {m: ([], [], []) for m in methods}
    per_round = max(1, math.ceil(reps / ROUNDS))
    with torch.inference_mode():
        for _ in range(ROUNDS):
            runs = [(samples[m], lambda fn=fn: C.time_calls(fn, per_round, warmup=2)) for m, fn in methods.items()]
            runs += [(roof[th][k], lambda f=f: f(th)) for k, f in (("numpy_sum", buf.numpy_sweep),
                                                                   ("torch_sum", buf.torch_sweep))]
            for acc, run in runs:
                for lst, new in zip(acc, run()):
                    lst.extend(new)
            time.sleep(IDLE_S)
    return {m: C.stats(*v, threads=th) for m, v in samples.items()}, numpy_ok


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
          f"load avg {cond['loadavg_start'][0]:.2f}; cold = rotate copies totalling >= {target_bytes >> 20} MB",
          flush=True)

    buf = C.StreamBuffer(max(args.threads), args.stream_mb)
    roof_s = {t: {"numpy_sum": ([], [], []), "torch_sum": ([], [], [])} for t in args.threads}
    rng = np.random.default_rng(0)
    rows = []
    for N, K in args.shapes:
        x, fp, per_bits = prepare_shape(N, K, args, target_bytes, rng)
        for th in args.threads:
            st, numpy_ok = bench_shape(th, x, fp, per_bits, args.reps, buf, roof_s)
            for bits, d in per_bits.items():
                rows.append(dict(shape=f"{N}x{K}", N=N, K=K, bits=bits, threads=th, schedule=d["sched"].to_dict(),
                                 schedule_source=d["src"], packed_bytes=d["packed"].nbytes,
                                 cold_copies=len(d["cold"]), fp32_bytes=fp[0].nbytes, fp32_copies=len(fp),
                                 rel_err=d["err"], copies_identical=d["same"], numpy_threads_set=numpy_ok,
                                 lutc_hot=st[f"w{bits}_hot"], lutc_cold=st[f"w{bits}_cold"],
                                 torch=st["torch"], numpy=st["numpy"]))
        del x, fp, per_bits

    roof = {}
    for t in args.threads:   # the roofline is the faster probe (by median; separately by uncontended median)
        nbytes = t * buf.chunk_bytes / 1e9
        probes = {k: C.stats(*v, threads=t) for k, v in roof_s[t].items()}
        unc = [nbytes / p["median_uncontended"] for p in probes.values() if p["median_uncontended"]]
        roof[t] = dict(GBps=max(nbytes / p["median"] for p in probes.values()),
                       GBps_uncontended=max(unc) if unc else None, mb_per_thread=args.stream_mb,
                       chunk_bytes_per_thread=buf.chunk_bytes, probes_time_per_call=probes)
    for r in rows:
        gb, t, cold = r["packed_bytes"] / 1e9, r["threads"], r["lutc_cold"]
        r["hot_GBps"] = gb / r["lutc_hot"]["median"]
        r["cold_GBps"] = gb / cold["median"]
        r["pct_roofline_cold"] = 100 * r["cold_GBps"] / roof[t]["GBps"]
        r["pct_roofline_hot"] = 100 * r["hot_GBps"] / roof[t]["GBps"]
        c, rc = cold["median_uncontended"], roof[t]["GBps_uncontended"]
        r["pct_roofline_cold_uncontended"] = 100 * gb / c / rc if c and rc else None
        r["fp32_GBps"] = r["fp32_bytes"] / 1e9 / r["torch"]["median"]
        for lib in ("torch", "numpy"):
            r[f"speedup_vs_{lib}"] = r[lib]["median"] / cold["median"]
            r[f"speedup_vs_{lib}_hot"] = r[lib]["median"] / r["lutc_hot"]["median"]
            a, b = r[lib]["median_uncontended"], cold["median_uncontended"]
            r[f"speedup_vs_{lib}_uncontended"] = a / b if a and b else None

    targets = evaluate_targets(rows)
    cond.update(loadavg_end=list(os.getloadavg()), wall_s=round(time.time() - t_start, 1))
    print_table(rows, roof, targets)
    out = pathlib.Path(args.out)
    C.write_json(out, dict(conditions=cond, roofline={str(t): v for t, v in roof.items()},
                           results=rows, targets=targets))
    plot(rows, roof, out.with_suffix(".png"), cond)  # after loadavg_end is set
    print(f"# wrote {out} and {out.with_suffix('.png')} in {cond['wall_s']} s "
          f"(load avg end {cond['loadavg_end'][0]:.2f})")


def evaluate_targets(rows):
    """PASS needs both estimates (median of all calls, median of uncontended calls) to reach the
    goal; with too few uncontended calls the verdict is None (inconclusive)."""
    out = []
    for r in rows:
        if r["bits"] == 2 and r["shape"] == "4096x4096" and r["threads"] == 1:
            out.append(dict(name="W2 4096x4096 1 thread: lutc (streaming) >= 6x faster than torch fp32 F.linear",
                            shape=r["shape"], threads=1, goal=6.0, value=r["speedup_vs_torch"],
                            value_uncontended=r["speedup_vs_torch_uncontended"]))
        if r["bits"] == 2 and r["threads"] == 2:
            out.append(dict(name=f"W2 {r['shape']} 2 threads: lutc (streaming) >= 50% of the 2-thread roofline",
                            shape=r["shape"], threads=2, goal=50.0, value=r["pct_roofline_cold"],
                            value_uncontended=r["pct_roofline_cold_uncontended"]))
    for t in out:
        v, u = t["value"], t["value_uncontended"]
        t["passed"] = None if u is None else bool(v >= t["goal"] and u >= t["goal"])
    return out


def _f(v, fmt, width):
    return format(v, fmt) if v is not None else "-".rjust(width)


def print_table(rows, roof, targets):
    print("# roofline = streaming read GB/s, median (uncontended median): " + ", ".join(
        f"{t} thr {v['GBps']:.1f} ({_f(v['GBps_uncontended'], '.1f', 1)})" for t, v in roof.items()))
    hdr = (f"{'shape':>11} {'W':>2} {'thr':>3} {'MB':>5} | {'hot ms':>6} {'p10-p90':>11} {'GB/s':>5} | "
           f"{'cold ms':>7} {'p10-p90':>11} {'GB/s':>5} {'%roof':>5} {'%roof*':>6} | {'torch ms':>8} "
           f"{'numpy ms':>8} | {'x torch':>7} {'x torch*':>8} {'x numpy':>7} | {'err':>5}")
    print(hdr + "\n" + "-" * len(hdr))
    ms = lambda s: f"{s['median'] * 1e3:6.3f} {s['p10'] * 1e3:5.3f}-{s['p90'] * 1e3:5.3f}"  # noqa: E731
    for r in rows:
        print(f"{r['shape']:>11} {r['bits']:>2} {r['threads']:>3} {r['packed_bytes'] / 1e6:5.1f} | "
              f"{ms(r['lutc_hot'])} {r['hot_GBps']:5.1f} | {' ' + ms(r['lutc_cold'])} {r['cold_GBps']:5.1f} "
              f"{r['pct_roofline_cold']:5.1f} {_f(r['pct_roofline_cold_uncontended'], '6.1f', 6)} | "
              f"{r['torch']['median'] * 1e3:8.3f} {r['numpy']['median'] * 1e3:8.3f} | {r['speedup_vs_torch']:7.2f} "
              f"{_f(r['speedup_vs_torch_uncontended'], '8.2f', 8)} {r['speedup_vs_numpy']:7.2f} | {r['rel_err']:5.3f}")
    print("# * = over uncontended calls only (not preempted, process had >= 0.8 x thr cores); '-' = too few")
    for t in sorted({r["threads"] for r in rows}):
        sel = [r for r in rows if r["threads"] == t]
        print(f"# contention at {t} thr (preempted calls / median cores the process had / uncontended calls): "
              + ", ".join(f"{m} {100 * np.mean([r[m]['preempted_frac'] for r in sel]):.0f}% / "
                          f"{np.median([r[m]['cores_median'] for r in sel]):.2f} / "
                          f"{100 * np.mean([r[m]['uncontended_frac'] for r in sel]):.0f}%"
                          for m in ("lutc_cold", "torch", "numpy")))
    for t in targets or [dict(name="targets: not evaluated (W2 4096x4096 / 2 threads not in this run)", passed=None)]:
        verdict = {None: "INCONCLUSIVE", True: "PASS", False: "FAIL"}[t["passed"]]
        if "value" in t:
            print(f"{verdict} {t['name']}: {t['value']:.2f} (uncontended: {_f(t['value_uncontended'], '.2f', 1)}), "
                  f"goal {t['goal']}")
        else:
            print(t["name"])


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
        ax2.bar(off, get("speedup_vs_torch"), width, color=color, label=f"{t} thr (median of all calls)")
        unc = [np.nan if v is None else v for v in get("speedup_vs_torch_uncontended")]
        ax2.plot(off, unc, "kD", ms=5, label="uncontended calls only" if i == 0 else None)
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
                 f"@ {cond['git_commit']} - {cond['date']} - load avg {cond['loadavg_start'][0]:.1f}"
                 f"->{cond['loadavg_end'][0]:.1f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
