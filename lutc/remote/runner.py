"""The device side of remote tuning: authenticate, rebuild and check sent kernels, verify, time, reply."""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import socket
import sys
import time

import numpy as np

from ..tuning.timing import WeightCopyCache, measure_kernel
from .problem import decode_problem, software, timing_options
from .protocol import (DEFAULT_MAX_PAYLOAD, AuthenticationError, Channel, ProtocolError, session_key,
                       split_sections)

MAX_PROBLEMS = 2         # problems a session keeps (each holds weights, reference and scratch)
MAX_KERNELS = 8          # compiled kernels a session keeps


def _log(msg: str):
    print(f"lutc runner: {msg}", file=sys.stderr, flush=True)


def runner_info() -> dict:
    """What a client needs to know about this device: its target, fingerprint and software."""
    from ..backend.target import get_target
    from ..tuning.device import host_fingerprint, usable_cores
    return {"target": get_target("host").to_dict(), "device": host_fingerprint(), "cores": usable_cores(),
            "software": software()}


class _Problem:
    def __init__(self, qw, x):
        from ..tuning.accuracy import ErrorBound
        self.qw, self.x = qw, x
        self.y = np.empty((x.shape[0], qw.N), np.float32)
        self.bound = ErrorBound(qw, x)


class Session:
    """One authenticated client: its problems and kernels. Runs only code it compiled itself."""

    def __init__(self):
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:
            self.cpus = list(range(os.cpu_count() or 1))
        self.problems, self.kernels, self._ids = {}, {}, itertools.count(1)
        self.copies = WeightCopyCache(keep=1)     # weight copies kept for one layout only

    def handle(self, h: dict, payload: bytes) -> dict:
        op = h.get("op")
        if op == "problem":
            qw, x = decode_problem(h, payload)
            while len(self.problems) >= MAX_PROBLEMS:
                self.problems.pop(next(iter(self.problems)))
            pid = f"p{next(self._ids)}"
            self.problems[pid] = _Problem(qw, x)
            return {"ok": True, "problem": pid}
        if op == "measure":
            return {"ok": True, "result": self.measure(h, payload)}
        raise ProtocolError(f"unknown op {op!r}")

    def _kernel(self, sched, target):
        from ..kernels.compiled import CompiledKernel
        key = (sched.codegen_key, target.key)
        k = self.kernels.get(key)
        if k is None:
            while len(self.kernels) >= MAX_KERNELS:
                self.kernels.pop(next(iter(self.kernels)))
            k = self.kernels[key] = CompiledKernel(sched, target)
        return k

    def measure(self, h: dict, payload: bytes) -> dict:
        from ..backend.target import NativeOnlyError, Target, runnable
        from ..schedule import Schedule
        prob = self.problems.get(h.get("problem"))
        if prob is None:
            raise ProtocolError(f"unknown problem {h.get('problem')!r}; send it first")
        try:
            sched = Schedule.from_dict(h.get("schedule"))
            target = Target.from_dict(h.get("target"))
        except (TypeError, ValueError) as e:
            return {"status": "invalid", "reason": str(e)}
        if (sched.bits, sched.group_size) != (prob.qw.bits, prob.qw.group_size):
            return {"status": "invalid", "reason": f"schedule is for w{sched.bits} g{sched.group_size}, the "
                    f"problem is w{prob.qw.bits} g{prob.qw.group_size}"}
        threads = h.get("threads") or sched.threads or len(self.cpus)
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= len(self.cpus):
            return {"status": "invalid", "reason": f"threads must be an int in 1..{len(self.cpus)} (this device's "
                    f"usable cores), got {threads!r}"}
        timing = timing_options(h.get("timing"))
        objects = split_sections(payload, h.get("objects"), "measure")
        try:
            target = runnable(target)
        except NativeOnlyError as e:
            return {"status": "unsupported_target", "reason": str(e)}
        t0 = time.perf_counter()
        try:
            kern = self._kernel(sched, target)
        except Exception as e:  # noqa: BLE001 - a schedule that fails to compile fails this request only
            return {"status": "compile_error", "reason": f"{type(e).__name__}: {e}"}
        compile_s = time.perf_counter() - t0
        # The sent objects must be exactly what this runner's lutc builds from the schedule, so
        # that what is timed is what the client compiled, and nothing else ever runs here.
        mine = kern.objects
        if objects != mine:
            return {"status": "rejected", "reason": "the kernel objects sent differ from this runner's own build of "
                    "the schedule; install the same lutc and llvmlite versions on both machines"}
        return measure_kernel(kern, prob.qw, prob.x, prob.y, prob.bound, sched, threads=threads, cpus=self.cpus,
                              timing=timing, copies=self.copies, compile_s=compile_s, tag=h["problem"])


def _nonce(h: dict) -> bytes:
    n = h.get("nonce")
    if h.get("op") != "hello" or not isinstance(n, str) or len(n) != 64:
        raise ProtocolError("expected a client hello with a 32-byte hex nonce")
    try:
        return bytes.fromhex(n)
    except ValueError:
        raise ProtocolError("client nonce is not hex") from None


def serve_connection(conn: socket.socket, token: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD,
                     idle_timeout: float = 600.0, peer: str = "?"):
    """Serve one client until it says bye, breaks the protocol, fails to authenticate or idles."""
    conn.settimeout(idle_timeout)
    ch = Channel(conn, is_server=True, max_payload=max_payload)
    server_nonce = os.urandom(32)
    try:
        ch.send({"op": "server_hello", "protocol": 1, "nonce": server_nonce.hex()})
        try:
            h, payload = ch.recv(key_from_header=lambda h: session_key(token, server_nonce, _nonce(h)))
        except AuthenticationError:
            _log(f"{peer}: authentication failed; closing")
            ch.set_key(None)
            ch.send({"ok": False, "error": "authentication failed: the runner does not accept this token"})
            return
        ch.send({"ok": True, "runner": runner_info()})
        sw = h.get("software") if isinstance(h.get("software"), dict) else {}
        _log(f"{peer}: authenticated (client lutc {sw.get('lutc', '?')})")
        session = Session()
        while True:
            h, payload = ch.recv()
            if h.get("op") == "bye":
                return
            try:
                reply = session.handle(h, payload)
            except ProtocolError as e:
                reply = {"ok": False, "error": str(e)}
            except Exception as e:  # noqa: BLE001 - report, keep serving
                reply = {"ok": False, "error": f"runner error: {type(e).__name__}: {e}"}
            if "result" in reply:
                r = reply["result"]
                _log(f"{peer}: {r['status']} {r.get('median_s', '')} {h.get('schedule')}")
            ch.send(reply)
    except ProtocolError as e:  # tell the client why (best effort), then hang up
        _log(f"{peer}: closing: {e}")
        try:
            ch.send({"ok": False, "error": str(e)})
        except OSError:
            pass
    except (ConnectionError, socket.timeout, OSError) as e:
        _log(f"{peer}: closing: {type(e).__name__}: {e}")
    finally:
        conn.close()


def _child(conn, token, max_payload, idle_timeout, peer):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    serve_connection(conn, token, max_payload, idle_timeout, peer)


class Runner:
    """Listens on (host, port) — loopback unless told otherwise — and serves one client at a
    time, each in a fresh process, so a crashing kernel or a leaky engine ends one session only."""

    def __init__(self, token: bytes, host: str = "127.0.0.1", port: int = 0,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, idle_timeout: float = 600.0, isolate: bool = True):
        self.token, self.max_payload, self.idle_timeout, self.isolate = token, max_payload, idle_timeout, isolate
        self._sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.address = self._sock.getsockname()[:2]
        self._closed = False

    def serve(self, once: bool = False):
        """Accept and serve clients until close() (or after one session with once=True)."""
        while not self._closed:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                if self._closed:
                    return
                raise
            peer = f"{addr[0]}:{addr[1]}"
            if self.isolate:
                ctx = mp.get_context("spawn")
                p = ctx.Process(target=_child, args=(conn, self.token, self.max_payload, self.idle_timeout, peer),
                                daemon=True, name="lutc-runner-session")
                p.start()
                conn.close()
                p.join()
                if p.exitcode:
                    _log(f"{peer}: session process ended with code {p.exitcode}")
            else:
                serve_connection(conn, self.token, self.max_payload, self.idle_timeout, peer)
            if once:
                return

    def close(self):
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
