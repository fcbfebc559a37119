"""Link lutc AArch64 kernel objects with harness.c and run them under qemu-aarch64."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from lutc.ir import types as T

HERE = Path(__file__).resolve().parent
GCC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
INSTALL_HINT = ("apt-get install -y qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross "
                "(Debian/Ubuntu; .ci/run installs them)")


def missing_tools() -> str | None:
    """Why the emulated tests cannot run here, or None when the toolchain is complete."""
    missing = [t for t in (GCC, QEMU) if shutil.which(t) is None]
    if missing:
        return f"{' and '.join(missing)} not found; install with: {INSTALL_HINT}"
    return None


class Plan:
    """The buffers and launches of one harness run, written as a lutc-plan v1 file."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.lines = ["lutc-plan 1"]
        self.nbuf = 0
        self.outputs = []

    def input(self, arr: np.ndarray) -> int:
        """A buffer initialized with a copy of arr's bytes (C order)."""
        path = self.dir / f"in{self.nbuf}.bin"
        np.ascontiguousarray(arr).tofile(path)
        return self._buffer(arr.nbytes, str(path))

    def scratch(self, nbytes: int) -> int:
        """A buffer of nbytes filled with 0xCD."""
        return self._buffer(nbytes, "-")

    def _buffer(self, nbytes, src):
        self.lines.append(f"buffer {int(nbytes)} {src}")
        self.nbuf += 1
        return self.nbuf - 1

    def launch(self, fn, grid, values):
        """Launch CompiledFunction fn over grid; pointer params take buffer numbers from `values`."""
        ctx, ntasks = fn.make_ctx(grid, values)
        slots = [str(ctx[i]) for i in range(3)]
        for i, p in enumerate(fn.params):
            v = ctx[3 + i]
            slots.append(f"b{v}" if isinstance(p.type, T.PointerType) else str(v))
        self.lines.append(f"launch {fn.name} {ntasks} {len(slots)} {' '.join(slots)}")

    def output(self, buf: int, dtype, shape):
        path = self.dir / f"out{buf}.bin"
        self.lines.append(f"output {buf} {path}")
        self.outputs.append((path, np.dtype(dtype), shape))

    def write(self) -> Path:
        path = self.dir / "plan.txt"
        path.write_text("\n".join(self.lines + ["end"]) + "\n")
        return path

    def results(self):
        return [np.fromfile(p, dt).reshape(shape) for p, dt, shape in self.outputs]


def _harness_object(workdir: Path) -> Path:
    obj = workdir / "harness.o"
    if not obj.exists():
        subprocess.run([GCC, "-O1", "-Wall", "-Werror", "-c", str(HERE / "harness.c"), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
    return obj


def build(kernel, workdir: Path) -> Path:
    """A static AArch64 executable: harness.c linked with the kernel's two objects."""
    workdir.mkdir(parents=True, exist_ok=True)
    objs = []
    for which, fn in (("tables", kernel.tables), ("gemm", kernel.gemm)):
        path = workdir / f"{which}.o"
        path.write_bytes(fn.obj)
        objs.append(str(path))
    exe = workdir / "harness"
    r = subprocess.run([GCC, "-static", "-o", str(exe), str(_harness_object(workdir.parent)), *objs],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"linking {kernel.schedule} failed:\n{r.stderr}")
    return exe


def build_functions(fns, workdir: Path) -> Path:
    """A static AArch64 executable: harness.c, built for these kernels, linked with their objects.

    `fns` are CompiledFunctions (each `fn.name` is launched by that name from a plan)."""
    workdir.mkdir(parents=True, exist_ok=True)
    names = " ".join(f"X({fn.name})" for fn in fns)
    harness = workdir / "harness_fns.o"
    subprocess.run([GCC, "-O1", "-Wall", "-Werror", f"-DLUTC_KERNELS={names}", "-c",
                    str(HERE / "harness.c"), "-o", str(harness)], check=True, capture_output=True, text=True)
    objs = []
    for i, fn in enumerate(fns):
        path = workdir / f"{fn.name}_{i}.o"
        path.write_bytes(fn.obj)
        objs.append(str(path))
    exe = workdir / "harness"
    r = subprocess.run([GCC, "-static", "-o", str(exe), str(harness), *objs], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"linking {names} failed:\n{r.stderr}")
    return exe


def run(exe: Path, plan: Plan, cpu: str = "max", timeout: float = 120):
    """Run exe on plan under qemu-aarch64 -cpu `cpu`; returns the plan's outputs."""
    path = plan.write()
    r = subprocess.run([QEMU, "-cpu", cpu, str(exe), str(path)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "QEMU_LD_PREFIX": "/usr/aarch64-linux-gnu"})
    if r.returncode:
        raise RuntimeError(f"{exe} exited with {r.returncode} under qemu (-cpu {cpu}): {r.stderr.strip()}")
    return plan.results()


def lut_gemm_emulated(kernel, exe: Path, x: np.ndarray, packed, workdir: Path, cpu: str = "max"):
    """y = x @ W_hat^T computed by the kernel's AArch64 code: the same launches as LaunchPlan."""
    s = kernel.schedule
    M, K = x.shape
    ng = packed.num_groups
    plan = Plan(workdir)
    bx, bw, bsz = plan.input(x.astype(np.float32)), plan.input(packed.w), plan.input(packed.sz)
    from lutc.kernels import spec
    sizes = spec.scratch_sizes(s, M, ng)                # the ABI's own sizes (lut_scales: M * ng * NB)
    luts = plan.scratch(sizes["luts"] * np.dtype(kernel.lut_np).itemsize)
    scales, sums = plan.scratch(sizes["lut_scales"] * 4), plan.scratch(sizes["xsums"] * 4)
    y = plan.scratch(M * packed.N * 4)
    plan.launch(kernel.tables, (M, ng), [bx, luts, scales, sums, K, ng])
    plan.launch(kernel.gemm, (packed.num_tiles,), [bw, bsz, luts, scales, sums, y, M, packed.N, ng])
    plan.output(y, np.float32, (M, packed.N))
    return run(exe, plan, cpu)[0]
