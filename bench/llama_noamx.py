"""Run llama.cpp without its AMX backend: on this host (Sapphire Rapids VM, llama-cpp-python 0.3.36
built with GGML_NATIVE) ggml's AMX matmul faults in `ldtilecfg` (general protection fault, the
process dies). bench/llama_noamx.c makes ggml's AMX permission request fail, so ggml leaves AMX
off and keeps its other paths (AVX-512, weight repacking), as on any AVX-512 host without AMX.
`reexec_without_amx()` builds the shim with the system C compiler and re-executes the process
with it in LD_PRELOAD (once)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

SRC = pathlib.Path(__file__).with_name("llama_noamx.c")


def has_amx() -> bool:
    try:
        return "amx_tile" in pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def reexec_without_amx(workdir: pathlib.Path) -> str:
    """'' if nothing to do (no AMX, or already preloaded), else does not return."""
    if not has_amx() or "llama_noamx" in os.environ.get("LD_PRELOAD", ""):
        return "shim active" if has_amx() else ""
    workdir.mkdir(parents=True, exist_ok=True)
    so = workdir / "llama_noamx.so"
    if not so.exists() or so.stat().st_mtime < SRC.stat().st_mtime:
        tmp = so.with_suffix(f".tmp{os.getpid()}.so")
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SRC), "-ldl"], check=True)
        os.replace(tmp, so)
    env = dict(os.environ, LD_PRELOAD=" ".join(x for x in (os.environ.get("LD_PRELOAD", ""), str(so)) if x))
    print(f"re-executing with {so} preloaded (llama.cpp's AMX backend off)", flush=True)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
