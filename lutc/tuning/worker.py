"""Measurement in a worker process: compile, check accuracy, time; crashes and hangs fail one trial only."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback

import numpy as np

from .timing import WeightCopyCache, measure_kernel

FAULTS_ENV = "LUTC_TUNE_FAULTS"


def injected_fault(sched) -> str | None:
    """Fault injection for tests: $LUTC_TUNE_FAULTS='knob=value:action,...' with action crash,
    hang, compile_error or wrong_result (a kernel that writes wrong output and would time as
    instant) makes the worker misbehave on matching schedules."""
    for item in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
        cond, _, action = item.partition(":")
        knob, _, value = cond.partition("=")
        if str(getattr(sched, knob.strip(), None)) == value.strip():
            return action.strip()
    return None


# ---------------------------------------------------------------------- worker side


class _Bench:
    """The problem's data, reference and kernels, living in the worker process."""

    def __init__(self, problem: dict):
        import quant
        from .accuracy import ErrorBound, probe_activations
        from ..launcher import usable_cpus
        self.cpus = usable_cpus()
        p = problem
        rng = np.random.default_rng(p["seed"])
        w = rng.standard_normal((p["N"], p["K"]), dtype=np.float32)
        self.qt = quant.quantize(w, p["bits"], p["group_size"], method="rtn")
        del w
        self.x = probe_activations(rng, p["M"], p["K"])
        self.y = np.empty((p["M"], p["N"]), np.float32)
        self.bound = ErrorBound(self.qt, self.x)
        self.cache = p.get("cache", "cold")
        self.copies = WeightCopyCache(keep=3)

    def measure(self, sched_dict: dict, timing: dict) -> dict:
        from ..ops import get_kernel
        from ..schedule import Schedule
        sched = Schedule.from_dict(sched_dict)
        fault = injected_fault(sched)
        if fault == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif fault == "hang":
            time.sleep(3600)
        t0 = time.perf_counter()
        try:
            if fault == "compile_error":
                raise RuntimeError("injected compile error")
            kern = get_kernel(sched)
        except Exception as e:  # noqa: BLE001 - any compile failure fails this trial only
            return {"status": "compile_error", "reason": f"{type(e).__name__}: {e}"}
        compile_s = time.perf_counter() - t0
        if fault == "wrong_result":
            kern = _WrongFastKernel(kern)
        return measure_kernel(kern, self.qt, self.x, self.y, self.bound, sched, threads=sched.threads or len(self.cpus),
                              cpus=self.cpus, timing=dict(timing, cache=self.cache), copies=self.copies,
                              compile_s=compile_s)


class _WrongFastKernel:
    """An injected fault: the fastest possible kernel (its timed call does nothing) whose output is
    wrong (every result doubled). The accuracy gate must fail it before it is ever timed."""

    def __init__(self, kern):
        self.kern, self.schedule = kern, kern.schedule

    def pack(self, qw):
        return self.kern.pack(qw)

    def __call__(self, x, packed, out, threads):
        self.kern(x, packed, out=out, threads=threads)
        out *= 2.0
        return out

    def plan(self, packed, M):
        return lambda x, y, threads: None


def _serve(conn, problem: dict):
    """Worker main loop: set up the problem, then answer ('measure', schedule, timing) requests."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        bench = _Bench(problem)
    except Exception:  # noqa: BLE001
        conn.send({"status": "setup_error", "reason": traceback.format_exc(limit=3)})
        return
    conn.send({"status": "ready"})
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        try:
            out = bench.measure(msg[1], msg[2])
        except Exception as e:  # noqa: BLE001
            out = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
        conn.send(out)

# ---------------------------------------------------------------------- parent side


class WorkerSetupError(RuntimeError):
    """The worker could not build the problem's data (not a candidate's fault)."""


def _death(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            return f"worker killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with code {code}"


def _start_ignoring_sigint(proc):
    """Start `proc` with SIGINT ignored from its first instruction (an ignored disposition survives
    exec), so Ctrl-C reaches only the tuner, which fails the running trial as 'interrupted'."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        proc.start()
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, old)


class MeasureWorker:
    """A worker process for one problem. measure() never raises for a bad candidate: a crash,
    a hang past `timeout` seconds or a compile error comes back as a failed result with its reason,
    and the next call starts a fresh worker. Workers are also recycled every `recycle_every` calls."""

    def __init__(self, problem: dict, timeout: float = 120.0, setup_timeout: float = 900.0, recycle_every: int = 40):
        self.problem = dict(problem)
        self.timeout, self.setup_timeout, self.recycle_every = timeout, setup_timeout, recycle_every
        self._proc = self._conn = None
        self._calls = 0

    def _start(self):
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self.problem), daemon=True, name="lutc-tune-worker")
        _start_ignoring_sigint(self._proc)
        child.close()
        self._conn, self._calls = parent, 0
        if not parent.poll(self.setup_timeout):
            self.close()
            raise WorkerSetupError(f"worker setup took longer than {self.setup_timeout:.0f}s")
        try:
            msg = parent.recv()
        except EOFError:
            reason = _death(self._proc)
            self.close()
            raise WorkerSetupError(f"worker died during setup ({reason})") from None
        if msg["status"] != "ready":
            self.close()
            raise WorkerSetupError(f"worker setup failed: {msg['reason']}")

    def request(self, msg: tuple) -> dict:
        if self._proc is None or self._calls >= self.recycle_every:
            self.close()
            self._start()
        self._calls += 1
        start = time.perf_counter()
        try:
            self._conn.send(msg)
            if not self._conn.poll(self.timeout):
                self.close()
                return {"status": "timeout", "reason": f"no result within the {self.timeout:g}s timeout (hang?)"}
            out = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self._proc.join(5)
            reason = _death(self._proc)
            self.close()
            return {"status": "crashed", "reason": reason}
        out["wall_s"] = time.perf_counter() - start
        return out

    def measure(self, schedule, timing: dict | None = None) -> dict:
        return self.request(("measure", schedule.to_dict(), dict(timing or {})))

    def close(self):
        if self._conn is not None:
            try:
                if self._proc.is_alive():
                    self._conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
            self._conn.close()
        if self._proc is not None:
            self._proc.join(2)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        self._proc = self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
