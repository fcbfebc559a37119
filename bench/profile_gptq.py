"""Profile gptq_quantize / hlq_fit on one 7B-shaped matrix, or time it against an earlier revision.

    python bench/profile_gptq.py --shape 22016x4096 --profile            # cProfile, top 15 by own time
    python bench/profile_gptq.py --shape 4096x11008 --baseline-rev 7165476  # former vs current, A/B

Random N(0, 0.02) weights; the Hessian 2 X^T X / m of 2048 random inputs with every 7th channel
scaled by 5 (correlated enough that GPTQ compensates). --baseline-rev loads quant/gptq.py and
quant/hlq.py as they were at that git revision (`git show`) and runs them in the same process,
interleaved with the current code (--repeat rounds). Reports wall and CPU seconds (process time,
all threads), the GPTQ loss, the fraction of equal codes and scales, and the load average.
Run it under `nice -n 10` on a shared machine.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import pstats
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from quant import gptq, hlq  # noqa: E402


def _revision_gptq(rev: str):
    """quant.gptq as of git revision rev, wired to quant.hlq of the same revision."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
    tmp = tempfile.mkdtemp(prefix="gptq-rev-")
    mods = {}
    for name in ("hlq", "gptq"):
        src = subprocess.run(["git", "-C", root, "show", f"{rev}:quant/{name}.py"], check=True,
                             capture_output=True, text=True).stdout
        path = os.path.join(tmp, f"{name}.py")
        with open(path, "w") as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location(f"quant.{name}_at_{rev}", path)
        mods[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    mods["gptq"].hlq_fit = mods["hlq"].hlq_fit
    return mods["gptq"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="22016x4096", help="NxK of the weight matrix")
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--fit", default="hlq", choices=["hlq", "rtn", "hlq-only"],
                    help='GPTQ group fit, or "hlq-only": plain hlq_fit of the matrix (no GPTQ)')
    ap.add_argument("--profile", action="store_true", help="cProfile the current code")
    ap.add_argument("--baseline-rev", default=None, help="git revision to compare against")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    n, k = (int(v) for v in args.shape.split("x"))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) * 0.02
    x = torch.randn(2048, k, generator=g)
    x[:, ::7] *= 5
    H = 2 * x.T @ x / 2048
    del x
    variants = [("current", gptq)]
    if args.baseline_rev:
        variants.insert(0, (args.baseline_rev, _revision_gptq(args.baseline_rev)))

    def run(mod):
        if args.fit == "hlq-only":
            fit = mod.hlq_fit if hasattr(mod, "hlq_fit") else hlq.hlq_fit
            return fit(w.numpy(), args.bits, args.group_size), None
        qt, info = mod.gptq_quantize(w, H, args.bits, args.group_size, fit=args.fit)
        return (qt.codes, qt.scales), info["loss"]

    results = {}
    for _ in range(args.repeat):
        for name, mod in variants:
            prof = cProfile.Profile() if args.profile and name == "current" else None
            t, c = time.perf_counter(), time.process_time()
            if prof:
                prof.enable()
            out, loss = run(mod)
            if prof:
                prof.disable()
            print(f"{args.shape} W{args.bits} g{args.group_size} {args.fit} {name}: wall {time.perf_counter() - t:.1f} s, "
                  f"CPU {time.process_time() - c:.1f} s, loss {loss}, load {os.getloadavg()[0]:.2f}", flush=True)
            results[name] = out
            if prof:
                pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    if len(results) == 2:
        (a, b) = results.values()
        print("equal codes", float((a[0] == b[0]).mean()), "equal scales", float((a[1] == b[1]).mean()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
