"""The device side of remote tuning: authenticate, rebuild and check sent kernels, verify, time, reply."""
from __future__ import annotations

import dataclasses
import itertools
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time

import numpy as np

from ..tuning.timing import WeightCopyCache, measure_kernel
from .problem import decode_problem, software, timing_options
from .protocol import (DEFAULT_MAX_PAYLOAD, PREAUTH_MAX_HEADER, PREAUTH_MAX_PAYLOAD, AuthenticationError, Channel,
                       ProtocolError, session_key, split_sections)

MAX_PROBLEMS = 2         # problems a session keeps (each holds weights, reference and scratch)
MAX_KERNELS = 8          # compiled kernels a session keeps
MAX_GROUP_SIZE = 4096    # largest group size a problem may declare


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a runner allows its peers (docs/targets.md: threat model). Every limit ends in a clear
    error reply or a closed connection, never in unbounded memory or time."""
    max_payload: int = DEFAULT_MAX_PAYLOAD  # bytes of payload per authenticated message
    idle_timeout: float = 600.0             # seconds an authenticated session may stay silent
    handshake_timeout: float = 10.0         # seconds from accept to a verified client hello, however paced
    request_timeout: float = 300.0          # seconds one request may take, waiting for the measurement lock included
    max_sessions: int = 4                   # authenticated sessions at once (measurements still run one at a time)
    max_handshakes: int = 16                # unauthenticated connections at once; more are closed at once
    queue_timeout: float = 120.0            # seconds an authenticated client waits for a free session slot
    max_problem_bytes: int = 2 << 30        # estimated memory one problem needs (weights, float64 reference, bounds)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v:
                raise ValueError(f"runner limit {f.name} must be a number > 0, got {v!r}")


def problem_bytes(bits: int, group_size: int, M: int, N: int, K: int) -> int:
    """Upper estimate of the memory a problem takes on the runner: codes and their float32/float64
    dequantization (N x K), the group-padded float64 activations and their int8-table regrouping
    (M x ceil(K/g)*g), the float64 reference, error and bound arrays (M x N), scale sums."""
    ng = -(-K // group_size)
    kp = ng * group_size
    return N * K * 13 + M * K * 12 + M * kp * 24 + M * N * 48 + N * ng * 8 * (bits + 3)


def check_problem_limits(h: dict, limits: Limits):
    """Refuse (ProtocolError) a problem header whose sizes would take more memory than allowed,
    before anything is decoded or allocated. Types are checked again by decode_problem."""
    vals = [h.get(k) for k in ("bits", "group_size", "M", "N", "K")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals):
        return  # decode_problem names the bad field
    bits, gs, M, N, K = vals
    if gs > MAX_GROUP_SIZE:
        raise ProtocolError(f"problem: group_size {gs} exceeds this runner's limit of {MAX_GROUP_SIZE}")
    need = problem_bytes(bits, gs, M, N, K)
    if need > limits.max_problem_bytes:
        raise ProtocolError(f"problem: M={M} N={N} K={K} g{gs} needs about {need >> 20} MiB here, over this "
                            f"runner's limit of {limits.max_problem_bytes >> 20} MiB (--max-problem-mb)")


def _allowed_target(d) -> str | None:
    """Why the target description `d` is refused, or None. A runner compiles only for its own CPU
    description or a registered named target, so a peer cannot make it compile (and fill its
    disk cache) for arbitrary cpu/feature/vector_bits strings."""
    from ..backend.target import get_target, target_names
    if not isinstance(d, dict):
        return "target must be a target description object"
    sent = {k: v for k, v in d.items() if k != "is_host"}
    for name in target_names():
        if sent == {k: v for k, v in get_target(name).to_dict().items() if k != "is_host"}:
            return None
    names = ", ".join(target_names())
    return f"target must be this runner's own CPU description or a named target ({names}); got {str(d)[:200]}"


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

    def __init__(self, limits: Limits | None = None):
        from ..launcher import usable_cpus
        self.cpus = usable_cpus()
        self.limits = limits or Limits()
        self.problems, self.kernels, self._ids = {}, {}, itertools.count(1)
        self.copies = WeightCopyCache(keep=1)     # weight copies kept for one layout only

    def handle(self, h: dict, payload: bytes) -> dict:
        op = h.get("op")
        if op == "problem":
            check_problem_limits(h, self.limits)
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
            while len(self.kernels) >= MAX_KERNELS:     # (the compiler's own memory cache is bounded too)
                self.kernels.pop(next(iter(self.kernels)))
            k = self.kernels[key] = CompiledKernel(sched, target)
        return k

    def measure(self, h: dict, payload: bytes) -> dict:
        from ..backend.target import NativeOnlyError, Target, runnable
        from ..schedule import Schedule
        prob = self.problems.get(h.get("problem"))
        if prob is None:
            raise ProtocolError(f"unknown problem {h.get('problem')!r}; send it first")
        why = _allowed_target(h.get("target"))
        if why is not None:
            return {"status": "invalid", "reason": why}
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


def handshake(conn: socket.socket, token: bytes, limits: Limits, peer: str = "?"):
    """Authenticate a client within limits.handshake_timeout and the small pre-authentication size
    limits; returns the session's Channel, or None after refusing (the reason is logged and,
    when the peer failed the MAC, sent)."""
    deadline = time.monotonic() + limits.handshake_timeout
    conn.settimeout(limits.handshake_timeout)
    ch = Channel(conn, is_server=True, max_payload=limits.max_payload)
    server_nonce = os.urandom(32)
    try:
        ch.send({"op": "server_hello", "protocol": 1, "nonce": server_nonce.hex()})
        try:
            h, _ = ch.recv(key_from_header=lambda h: session_key(token, server_nonce, _nonce(h)),
                           max_header=PREAUTH_MAX_HEADER, max_payload=PREAUTH_MAX_PAYLOAD, deadline=deadline)
        except AuthenticationError:
            _log(f"{peer}: authentication failed; closing")
            ch.set_key(None)
            ch.send({"ok": False, "error": "authentication failed: the runner does not accept this token"})
            return None
    except ProtocolError as e:
        _log(f"{peer}: closing before authentication: {e}")
        return None
    except (ConnectionError, socket.timeout, OSError) as e:
        _log(f"{peer}: closing before authentication: {type(e).__name__}: {e}")
        return None
    sw = h.get("software") if isinstance(h.get("software"), dict) else {}
    _log(f"{peer}: authenticated (client lutc {str(sw.get('lutc', '?'))[:40]})")
    return ch


class DeviceLock:
    """The lock all sessions' measurements take, shared with the session processes. It records
    the pid holding it, so the runner can free it when a session process dies holding it (a
    crashing kernel, or the request time limit ending the process)."""

    def __init__(self, ctx=None):
        ctx = ctx or mp.get_context("spawn")
        self._lock = ctx.Lock()
        self._holder = ctx.Value("q", 0, lock=False)

    def acquire(self, timeout: float) -> bool:
        if not self._lock.acquire(timeout=timeout):
            return False
        self._holder.value = os.getpid()
        return True

    def release(self):
        self._holder.value = 0
        self._lock.release()

    def held_here(self) -> bool:
        return self._holder.value == os.getpid()

    def release_if_held_by(self, pid: int) -> bool:
        """Free the lock if the (dead) process `pid` held it; True if it did."""
        if pid and self._holder.value == pid:
            self.release()
            return True
        return False


class _RequestClock:
    """limits.request_timeout for one request: when it passes, the session answers with an error
    and ends (the process exits when sessions are isolated: native code cannot be interrupted)."""

    def __init__(self, ch: Channel, limit: float, hard_exit: bool, peer: str, measure_lock=None, exit=os._exit):
        self.ch, self.limit, self.hard_exit, self.peer = ch, limit, hard_exit, peer
        self.measure_lock, self._exit = measure_lock, exit
        self.lock = threading.Lock()
        self.expired = False
        self._timer = None

    def start(self, op):
        self._timer = threading.Timer(self.limit, self._expire, args=(op,))
        self._timer.daemon = True
        self._timer.start()

    def _expire(self, op):
        with self.lock:
            if self._timer is None:
                return
            self.expired = True
            msg = f"request {str(op)[:20]!r} exceeded this runner's limit of {self.limit:g} s; session closed"
            _log(f"{self.peer}: {msg}")
            try:
                self.ch.send({"ok": False, "error": msg})
                self.ch.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            if self.hard_exit:
                if isinstance(self.measure_lock, DeviceLock) and self.measure_lock.held_here():
                    self.measure_lock.release()   # other sessions may measure again
                self._exit(3)

    def reply(self, reply: dict) -> bool:
        """Send the request's reply unless the clock already ended the session; False then."""
        with self.lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.expired:
                return False
            self.ch.send(reply)
            return True


def serve_connection(conn: socket.socket, token: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD,
                     idle_timeout: float = 600.0, peer: str = "?", limits: Limits | None = None,
                     measure_lock=None, state=None, hard_exit: bool = False):
    """Serve one client until it says bye, breaks the protocol, fails to authenticate or idles.

    With `state` (a Channel.state() from handshake() in the parent), the client is already
    authenticated and this continues its session. `measure_lock` (shared by all sessions) makes
    measurements run one at a time, so concurrent sessions do not disturb each other's timings."""
    limits = limits or Limits(max_payload=max_payload, idle_timeout=idle_timeout)
    try:
        if state is None:
            ch = handshake(conn, token, limits, peer)
            if ch is None:
                return
        else:
            ch = Channel(conn, is_server=True, max_payload=limits.max_payload)
            ch.restore(state)
        _session(ch, conn, limits, measure_lock, hard_exit, peer)
    finally:
        conn.close()


def _session(ch, conn, limits, measure_lock, hard_exit, peer):
    conn.settimeout(limits.idle_timeout)
    try:
        ch.send({"ok": True, "runner": runner_info()})
        session = Session(limits)
        while True:
            h, payload = ch.recv()
            if h.get("op") == "bye":
                return
            clock = _RequestClock(ch, limits.request_timeout, hard_exit, peer, measure_lock)
            clock.start(h.get("op"))
            t0 = time.monotonic()
            try:
                if h.get("op") == "measure" and measure_lock is not None:
                    if not measure_lock.acquire(timeout=limits.request_timeout):
                        raise ProtocolError(f"runner busy: another session's measurement held the device for "
                                            f"{limits.request_timeout:g} s")
                    try:
                        reply = session.handle(h, payload)
                    finally:
                        measure_lock.release()
                else:
                    reply = session.handle(h, payload)
            except ProtocolError as e:
                reply = {"ok": False, "error": str(e)}
            except MemoryError:
                reply = {"ok": False, "error": "runner error: out of memory for this request"}
            except Exception as e:  # noqa: BLE001 - report, keep serving
                reply = {"ok": False, "error": f"runner error: {type(e).__name__}: {e}"}
            if "result" in reply:
                r = reply["result"]
                _log(f"{peer}: {r['status']} {r.get('median_s', '')} {str(h.get('schedule'))[:300]} "
                     f"({time.monotonic() - t0:.1f} s)")
            if not clock.reply(reply):
                return
    except ProtocolError as e:  # tell the client why (best effort), then hang up
        _log(f"{peer}: closing: {e}")
        try:
            ch.send({"ok": False, "error": str(e)})
        except OSError:
            pass
    except (ConnectionError, socket.timeout, OSError) as e:
        _log(f"{peer}: closing: {type(e).__name__}: {e}")


class _ThreadLock:
    """DeviceLock's interface for sessions served in this process (isolate=False)."""

    def __init__(self):
        self._lock = threading.Lock()

    def acquire(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout)

    def release(self):
        self._lock.release()


def _child(conn, token, limits, peer, measure_lock, state):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    serve_connection(conn, token, peer=peer, limits=limits, measure_lock=measure_lock, state=state,
                     hard_exit=True)


class Runner:
    """Listens on (host, port) — loopback unless told otherwise — and serves clients concurrently.

    Each connection gets a thread that authenticates it within `handshake_timeout` (at most
    `max_handshakes` at once; a silent or slow peer blocks nobody else). An authenticated client
    then waits up to `queue_timeout` for one of `max_sessions` session slots, and its session runs
    in a fresh process (isolate=True), so a crashing kernel or a leaky engine ends one session
    only. Measurements of all sessions take one lock, so they never run at the same time."""

    def __init__(self, token: bytes, host: str = "127.0.0.1", port: int = 0,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, idle_timeout: float = 600.0, isolate: bool = True,
                 limits: Limits | None = None, **limit_kw):
        if limits is None:
            limits = Limits(max_payload=int(max_payload), idle_timeout=idle_timeout, **limit_kw)
        elif limit_kw:
            limits = dataclasses.replace(limits, **limit_kw)
        self.token, self.limits, self.isolate = token, limits, isolate
        self.max_payload, self.idle_timeout = limits.max_payload, limits.idle_timeout
        self._sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.address = self._sock.getsockname()[:2]
        self._closed = False
        self._handshakes = threading.BoundedSemaphore(limits.max_handshakes)
        self._sessions = threading.BoundedSemaphore(limits.max_sessions)
        self._measure_lock = DeviceLock() if isolate else _ThreadLock()
        self._threads = set()
        self._served = 0
        self._done = threading.Condition()

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
            if not self._handshakes.acquire(blocking=False):
                _log(f"{peer}: {self.limits.max_handshakes} connections already authenticating; closing")
                conn.close()
                continue
            t = threading.Thread(target=self._connection, args=(conn, peer), daemon=True,
                                 name=f"lutc-runner-{peer}")
            self._threads.add(t)
            t.start()
            if once:
                with self._done:
                    while not self._served and t.is_alive():
                        self._done.wait(0.2)
                    if self._served:
                        t.join()
                        return

    def _connection(self, conn, peer):
        session_slot = False
        try:
            try:
                ch = handshake(conn, self.token, self.limits, peer)
            finally:
                self._handshakes.release()
            if ch is None:
                conn.close()
                return
            session_slot = self._sessions.acquire(timeout=self.limits.queue_timeout)
            if not session_slot:
                msg = f"{self.limits.max_sessions} sessions busy for {self.limits.queue_timeout:g} s; try again later"
                _log(f"{peer}: {msg}; closing")
                try:
                    ch.send({"ok": False, "error": f"runner busy: {msg}"})
                except OSError:
                    pass
                conn.close()
                return
            if self.isolate:
                ctx = mp.get_context("spawn")
                p = ctx.Process(target=_child, args=(conn, self.token, self.limits, peer, self._measure_lock,
                                                     ch.state()), daemon=True, name="lutc-runner-session")
                p.start()
                conn.close()
                p.join()
                if p.exitcode:
                    _log(f"{peer}: session process ended with code {p.exitcode}")
                if self._measure_lock.release_if_held_by(p.pid):
                    _log(f"{peer}: the session process died measuring; freed the measurement lock")
            else:
                serve_connection(conn, self.token, peer=peer, limits=self.limits, measure_lock=self._measure_lock,
                                 state=ch.state())
            with self._done:
                self._served += 1
                self._done.notify_all()
        finally:
            if session_slot:
                self._sessions.release()
            self._threads.discard(threading.current_thread())

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
