"""The full-depth LLaMA-2-7B-shaped benchmark model of bench/bench_e2e.py (`--models llama7b-full`):
32 layers, vocab 32000, its F16 GGUF and RTN lutc checkpoints under LUTC_LLAMA7B_DIR
(default /work/data/llama7b: llama7b-f16.gguf, rtn-w2g128/, rtn-w4g128/, READY_RTN when both
checkpoints exist), llama.cpp's Q2_K / Q4_0 quantized from that F16 GGUF and kept next to it, and
the load time of a lutc start (cold: page cache dropped, warm) measured in fresh processes."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIR = pathlib.Path(os.environ.get("LUTC_LLAMA7B_DIR", "/work/data/llama7b"))
NAME = "llama7b-full"


def checkpoint(bits: int) -> pathlib.Path:
    path = DIR / f"rtn-w{bits}g128"
    if not (path / "manifest.json").exists() and not any(path.glob("*")):
        raise FileNotFoundError(f"{path}: no lutc checkpoint (written by another job; {DIR / 'READY_RTN'} "
                                "appears when the RTN checkpoints exist)")
    return path


def decoder(bits: int, n_ctx: int, threads: int):
    """A LeanDecoder of the checkpoint through runtime.models.load_decoder (pack cache included)."""
    from runtime.models import load_decoder
    dec, _ = load_decoder(str(checkpoint(bits)), threads=threads, n_ctx=n_ctx, progress=False)
    return dec


def llama_file(qtype: str) -> pathlib.Path:
    """llama.cpp's `qtype` GGUF quantized from the F16 GGUF (made once, atomically)."""
    out = DIR / f"llama7b-{qtype}.gguf"
    if out.exists():
        return out
    src = DIR / "llama7b-f16.gguf"
    if not src.exists():
        raise FileNotFoundError(f"{src}: the F16 GGUF is missing")
    from bench.common import llama_quantize
    return llama_quantize(src, out, qtype)


_LOAD_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from runtime.models import load_decoder
t1 = time.perf_counter()
dec, _ = load_decoder(sys.argv[1], threads=1, n_ctx=256, progress=False)
t2 = time.perf_counter()
dec.prefill([1, 2, 3]); dec.decode(4)
t3 = time.perf_counter()
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1, first_token_s=t3 - t2,   # VmHWM: this exec's peak
                      peak_rss_gb=hwm / 2**20)))                                 # (ru_maxrss keeps the parent's)
"""


def drop_page_cache() -> bool:
    """sync; echo 3 > /proc/sys/vm/drop_caches (needs root); True if it worked."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def load_times(bits: int, repeats: int = 1) -> dict:
    """lutc start-up of the checkpoint in fresh processes: the first start (packs and writes the pack
    cache if absent), cold starts (page cache dropped first) and warm starts (right after)."""
    ckpt = str(checkpoint(bits))
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def child():
        out = subprocess.run([sys.executable, "-c", _LOAD_CHILD, ckpt], env=env, capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    res = dict(first=child(), cold=[], warm=[], dropped=True)
    for _ in range(repeats):
        res["dropped"] &= drop_page_cache()
        res["cold"].append(child())
        res["warm"].append(child())
    return res
