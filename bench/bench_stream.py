"""Streaming quantization of a model larger than the memory it is given: time and peak RSS.

    python bench/bench_stream.py --model-dir /tmp/syn7b --make llama2-7b --method hlq --bits 2 \\
        --group-size 64 --limit-gb 8 --offload /tmp/syn7b-codes --out bench/results/stream.json

--make writes a synthetic LLaMA (random F16 weights, see quant.synthetic) first if the directory
has no model. quantize_model runs in a child process; a monitor thread in the child samples
/proc/self/status every 50 ms and stops the run (exit 86) if resident anonymous memory (RssAnon:
what cannot be paged back to a file) passes --limit-gb. Reported: wall seconds, peak RssAnon,
peak VmHWM (all resident pages, including file-backed ones the kernel can drop), the baseline
after imports. Calibrated methods get random token ids (the synthetic model has no tokenizer).

The full LLaMA-2-7B-shaped measurement (docs/quantization.md, "Models larger than memory"):

    python bench/bench_stream.py --llama7b /work/data/llama7b --runs rtn-w2g128,rtn-w4g128,hlq-gptq-w2g128 \
        --limit-gb 8 --nsamples 8 --seqlen 256 --out bench/results/stream_llama7b.json

writes ROOT/hf (safetensors, tokenizer) and ROOT/llama7b-f16.gguf once, then runs `lutc quantize
... --offload-dir` for each run under a watchdog (run_watched: the same RssAnon limit, sampled
from /proc/<pid>/status by this process, SIGKILL above it), saving ROOT/<run> checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LIMIT_EXIT = 86

CHILD = r"""
import json, os, sys, threading, time
spec = json.loads(sys.argv[1])
def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) * 1024
    return out
peak = {"RssAnon": 0}
import numpy as np, torch
import quant
from quant.model_quant import quantize_model
from transformers import AutoModelForCausalLM, LlamaForCausalLM  # imported before the baseline
base = status()
limit = spec.get("limit_bytes") or (spec.get("limit_delta") and base["RssAnon"] + spec["limit_delta"])
def watch():
    while True:
        s = status()
        peak["RssAnon"] = max(peak["RssAnon"], s["RssAnon"])
        if limit and s["RssAnon"] > limit:
            print(json.dumps({"error": "memory limit", "rss_anon": s["RssAnon"]}), flush=True)
            os._exit(86)
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
calib = None
if spec["method"] not in ("rtn", "hlq"):
    g = torch.Generator().manual_seed(0)
    cfg = json.load(open(os.path.join(spec["model_dir"], "config.json")))
    calib = torch.randint(0, cfg["vocab_size"], (spec["nsamples"], spec["seqlen"]), generator=g)
t0 = time.perf_counter()
qm = quantize_model(spec["model_dir"], spec["bits"], spec["group_size"], spec["method"], calib=calib,
                    progress=spec.get("progress", False), offload_dir=spec.get("offload"))
sec = time.perf_counter() - t0
time.sleep(0.1)
s = status()
print(json.dumps({"seconds": round(sec, 1), "cpu_seconds": qm.meta["cpu_seconds"],
                  "peak_rss_anon": max(peak["RssAnon"], s["RssAnon"]), "peak_vmhwm": s["VmHWM"],
                  "baseline_rss_anon": base["RssAnon"], "linears": len(qm.linears)}), flush=True)
"""


def run_limited(model_dir, method, bits, group_size, limit_bytes=None, offload=None, nsamples=8, seqlen=128,
                progress=False, env=None, limit_delta=None) -> dict:
    """quantize_model(model_dir, ...) in a child process under an RssAnon limit (absolute, or
    limit_delta above the child's baseline after imports); the child's report (see the module
    doc), plus "returncode"."""
    spec = dict(model_dir=os.fspath(model_dir), method=method, bits=bits, group_size=group_size,
                limit_bytes=limit_bytes, limit_delta=limit_delta, offload=None if offload is None else os.fspath(offload),
                nsamples=nsamples, seqlen=seqlen, progress=progress)
    e = dict(os.environ if env is None else env)
    e.setdefault("MALLOC_ARENA_MAX", "2")
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=e)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1]) if lines else {"error": p.stderr[-2000:]}
    out["returncode"] = p.returncode
    if progress:
        sys.stderr.write(p.stderr[-4000:])
    return out


def make_llama7b(root) -> tuple[str, str]:
    """The synthetic LLaMA-2-7B-shaped model under root: hf/ (config, model.safetensors, tokenizer)
    and llama7b-f16.gguf (the same weights and tokenizer, for llama.cpp). Each is written once,
    into a temp name that is renamed when complete; existing ones are kept."""
    import shutil
    from quant.synthetic import LLAMA2_7B, write_gguf_from_dir, write_synthetic_llama, write_synthetic_tokenizer
    hf, gguf = os.path.join(root, "hf"), os.path.join(root, "llama7b-f16.gguf")
    os.makedirs(root, exist_ok=True)
    if not os.path.isfile(os.path.join(hf, "model.safetensors")):
        tmp = hf + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        write_synthetic_llama(tmp, **LLAMA2_7B, rms_norm_eps=1e-5)
        write_synthetic_tokenizer(tmp, LLAMA2_7B["vocab"])
        os.rename(tmp, hf)
        print(f"wrote {hf} in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    if not os.path.isfile(gguf):
        t0 = time.perf_counter()
        write_gguf_from_dir(hf, gguf)
        print(f"wrote {gguf} in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return hf, gguf


def run_watched(cmd, limit_bytes, log_path, env=None) -> dict:
    """Run cmd (stdout and stderr to log_path) while sampling its /proc status every 50 ms; kill it
    (SIGKILL) as soon as its RssAnon passes limit_bytes. Returns wall and CPU seconds, peak
    RssAnon, peak VmHWM, returncode and whether the limit killed it."""
    import signal
    e = dict(os.environ if env is None else env)
    e.setdefault("MALLOC_ARENA_MAX", "2")
    peak = {"RssAnon": 0, "VmHWM": 0}
    killed = False
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=e)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)  # reaps it with its CPU time
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                break
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        k, _, v = line.partition(":")
                        if k in peak:
                            peak[k] = max(peak[k], int(v.split()[0]) * 1024)
            except (OSError, ValueError):
                pass
            if peak["RssAnon"] > limit_bytes and not killed:
                killed = True
                os.kill(p.pid, signal.SIGKILL)
            time.sleep(0.05)
    return {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_anon": peak["RssAnon"], "peak_vmhwm": max(peak["VmHWM"], usage.ru_maxrss * 1024),
            "returncode": p.returncode, "killed_by_limit": killed}


LLAMA7B_RUNS = {"rtn-w2g128": ("rtn", 2), "rtn-w4g128": ("rtn", 4), "hlq-gptq-w2g128": ("hlq-gptq", 2),
                "hlq-w2g128": ("hlq", 2)}


def llama7b(root, runs, limit_gb, nsamples, seqlen, out=None) -> int:
    """The synthetic 7B under root (made if missing), then `lutc quantize` for each run under the
    RssAnon watchdog; checkpoints at root/<run>, logs at root/<run>.log, codes offloaded to
    root/codes-<run> (deleted afterwards). root/READY_RTN appears once both RTN checkpoints exist."""
    import shutil
    hf, _ = make_llama7b(root)
    results = []
    for name in runs:
        method, bits = LLAMA7B_RUNS[name]
        ckpt, codes = os.path.join(root, name), os.path.join(root, "codes-" + name)
        cmd = [sys.executable, "-c", "import sys; from lutc.cli import main; sys.exit(main())", "quantize", hf,
               "--bits", str(bits), "--group-size", "128", "--method", method, "--lm-head-bits", "4",
               "--offload-dir", codes, "--out", ckpt]
        if method not in ("rtn", "hlq"):
            cmd += ["--nsamples", str(nsamples), "--seqlen", str(seqlen)]
        load0 = os.getloadavg()
        res = run_watched(cmd, int(limit_gb * 2**30), os.path.join(root, name + ".log"))
        shutil.rmtree(codes, ignore_errors=True)
        res.update(run=name, method=method, bits=bits, group_size=128, lm_head_bits=4, limit_gb=limit_gb,
                   limit="watchdog: RssAnon sampled every 50 ms, SIGKILL above the limit",
                   calibration=None if method in ("rtn", "hlq") else f"{nsamples} x {seqlen} tokens (pydoc corpus)",
                   command="lutc " + " ".join(cmd[3:]),
                   weights_bytes=os.path.getsize(os.path.join(hf, "model.safetensors")),
                   load_avg_before=[round(x, 2) for x in load0], load_avg_after=[round(x, 2) for x in os.getloadavg()],
                   nproc=os.cpu_count(), when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        print(json.dumps(res), file=sys.stderr, flush=True)
        results.append(res)
        if out:
            prev = json.load(open(out)) if os.path.exists(out) else []
            tmp = out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(prev + [res], f, indent=1)
            os.replace(tmp, out)
        if all(os.path.isfile(os.path.join(root, r, "manifest.json")) for r in ("rtn-w2g128", "rtn-w4g128")):
            open(os.path.join(root, "READY_RTN"), "a").close()
    return 0 if all(r["returncode"] == 0 for r in results) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama7b", default=None, metavar="ROOT",
                    help="make the synthetic 7B under ROOT and run `lutc quantize` on it for each of --runs")
    ap.add_argument("--runs", default=",".join(LLAMA7B_RUNS), help="with --llama7b: comma-separated, of "
                    + ", ".join(LLAMA7B_RUNS))
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--make", default=None, help='"llama2-7b" or "HIDDEN,INTER,LAYERS,HEADS,VOCAB"')
    ap.add_argument("--layers", type=int, default=None, help="with --make llama2-7b: fewer layers")
    ap.add_argument("--method", default="hlq")
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--limit-gb", type=float, default=8.0)
    ap.add_argument("--offload", default=None, help="directory for the codes (default: <model-dir>-codes)")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--out", default=None, help="append the result to this JSON list")
    args = ap.parse_args(argv)
    if args.llama7b:
        return llama7b(args.llama7b, args.runs.split(","), args.limit_gb, args.nsamples, args.seqlen, args.out)
    if not args.model_dir:
        ap.error("--model-dir or --llama7b is required")
    from quant.synthetic import LLAMA2_7B, write_synthetic_llama
    if args.make and not os.path.isfile(os.path.join(args.model_dir, "model.safetensors")):
        if args.make == "llama2-7b":
            shape = dict(LLAMA2_7B)
        else:
            h, i, n, hd, v = (int(x) for x in args.make.split(","))
            shape = dict(hidden=h, inter=i, layers=n, heads=hd, kv_heads=hd, vocab=v)
        if args.layers:
            shape["layers"] = args.layers
        t0 = time.perf_counter()
        size = write_synthetic_llama(args.model_dir, **shape)
        print(f"wrote {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    size = os.path.getsize(os.path.join(args.model_dir, "model.safetensors"))
    offload = args.offload or args.model_dir.rstrip("/") + "-codes"
    res = run_limited(args.model_dir, args.method, args.bits, args.group_size, int(args.limit_gb * 2**30), offload,
                      args.nsamples, args.seqlen, progress=True)
    res.update(model_dir=args.model_dir, weights_bytes=size, method=args.method, bits=args.bits,
               group_size=args.group_size, limit_gb=args.limit_gb, load_avg_1min=round(os.getloadavg()[0], 2),
               nproc=os.cpu_count())
    print(json.dumps(res, indent=1))
    if args.out:
        prev = json.load(open(args.out)) if os.path.exists(args.out) else []
        with open(args.out, "w") as f:
            json.dump(prev + [res], f, indent=1)
    return 0 if res["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
