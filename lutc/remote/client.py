"""The tuner's side of remote tuning: RemoteRunner (compile here, measure on the device) and RemoteMeasureWorker."""
from __future__ import annotations

import os
import socket
import time

import numpy as np

from .problem import encode_problem, software
from .runner import MAX_PROBLEMS
from .protocol import (DEFAULT_MAX_PAYLOAD, AuthenticationError, Channel, ProtocolError, parse_address,
                       read_token, session_key)


class RunnerError(RuntimeError):
    """The runner cannot be used: unreachable, wrong token, other software versions, or it refused a request."""


class RemoteRunner:
    """A session with a `lutc runner` on a device.

    measure() compiles the schedule here (for the runner's CPU, or the named `target` such as
    'm2'), sends the objects with the problem, and returns the runner's measurement: the same
    dict as the tuner's local MeasureWorker (status, median_s, spread, err_ratio, ...).
    """

    def __init__(self, host: str, port: int, token, timeout: float = 300.0, connect_timeout: float = 15.0,
                 max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.host, self.port = host, int(port)
        self.token = token.encode() if isinstance(token, str) else bytes(token)
        self.timeout, self.connect_timeout, self.max_payload = timeout, connect_timeout, max_payload
        self._ch = None
        self.info = None
        self._problems = {}     # (id(qw), id(x)) -> (problem id on the runner, qw, x), this connection
        self._data = {}         # generated problems by (bits, group_size, M, N, K, seed)

    @classmethod
    def from_address(cls, address: str, token_file=None, token=None, **kw) -> "RemoteRunner":
        host, port = parse_address(address)
        if token is None:
            if token_file is None:
                raise ValueError("the runner's shared token is missing: give --token-file FILE "
                                 "(API: token_file= or token=)")
            token = read_token(token_file)
        return cls(host, port, token, **kw)

    def __repr__(self) -> str:
        return f"RemoteRunner({self.host}:{self.port})"

    # ------------------------------------------------------------------ connection
    def connect(self) -> dict:
        """Connect and authenticate (both ways); returns the runner's info. Idempotent."""
        if self._ch is not None:
            return self.info
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as e:
            raise RunnerError(f"cannot reach a lutc runner at {self.host}:{self.port} ({e}); start one on the "
                              "device with `lutc runner --listen HOST:PORT --token-file FILE`") from None
        sock.settimeout(self.timeout)
        ch = Channel(sock, is_server=False, max_payload=self.max_payload)
        try:
            hello, _ = ch.recv(authenticated=False)
            nonce = bytes.fromhex(str(hello.get("nonce", "")))
            if hello.get("op") != "server_hello" or len(nonce) != 32:
                raise ProtocolError("not a lutc runner")
            mine = os.urandom(32)
            ch.set_key(session_key(self.token, nonce, mine))
            ch.send({"op": "hello", "nonce": mine.hex(), "software": software()})
            reply, _ = ch.recv()
        except AuthenticationError:
            sock.close()
            raise RunnerError(f"the runner at {self.host}:{self.port} rejected this token (or holds another "
                              "one): both ends need the same --token-file") from None
        except (ProtocolError, ConnectionError, OSError, ValueError) as e:
            sock.close()
            raise RunnerError(f"handshake with {self.host}:{self.port} failed: {e}") from None
        if not reply.get("ok") or not isinstance(reply.get("runner"), dict):
            sock.close()
            raise RunnerError(f"the runner at {self.host}:{self.port} refused the session: "
                              f"{reply.get('error', 'no runner info in its reply')}")
        self._ch, self.info = ch, reply["runner"]
        theirs = self.info.get("software", {})
        if theirs != software():
            self.close()
            raise RunnerError(f"the runner at {self.host}:{self.port} has {theirs}, this client has {software()}; "
                              "kernel objects would differ: install the same lutc and llvmlite on both machines")
        self._problems = {}
        return self.info

    def close(self):
        if self._ch is not None:
            try:
                self._ch.send({"op": "bye"})
            except OSError:
                pass
            self._ch.sock.close()
        self._ch = None

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, header: dict, payload: bytes = b"") -> dict:
        self.connect()
        self._ch.send(header, payload)
        reply, _ = self._ch.recv()
        if not reply.get("ok"):
            raise RunnerError(f"runner refused {header.get('op')}: {reply.get('error')}")
        return reply

    # ------------------------------------------------------------------ runner facts
    @property
    def target(self):
        """The runner's CPU as a Target description (never marked as this host)."""
        from ..backend.target import Target
        return Target.from_dict(self.connect()["target"])

    @property
    def device(self) -> dict:
        """The runner's device fingerprint (what its tuning db file is named after)."""
        return self.connect()["device"]

    # ------------------------------------------------------------------ work
    def load_problem(self, qw, x: np.ndarray) -> str:
        """Send weights and activations once per connection; returns the runner's problem id."""
        key = (id(qw), id(x))
        if key not in self._problems:
            fields, payload = encode_problem(qw, x)
            pid = self._request(dict(op="problem", **fields), payload)["problem"]
            while len(self._problems) >= MAX_PROBLEMS:  # the runner keeps as many, oldest out first
                self._problems.pop(next(iter(self._problems)))
            self._problems[key] = (pid, qw, x)  # holding qw and x keeps their ids unique
        return self._problems[key][0]

    def problem_data(self, bits, group_size, M, N, K, seed=0):
        """The same random problem the local tuner worker measures: rtn weights, probe x."""
        key = (bits, group_size, M, N, K, seed)
        if key not in self._data:
            import quant
            from ..tuning.accuracy import probe_activations
            rng = np.random.default_rng(seed)
            w = rng.standard_normal((N, K), dtype=np.float32)
            qw = quant.quantize(w, bits, group_size, method="rtn")
            self._data = {key: (qw, probe_activations(rng, M, K))}
        return self._data[key]

    def measure(self, schedule, shape=None, *, qw=None, x=None, target=None, threads=None,
                timing: dict | None = None, seed: int = 0) -> dict:
        """Time `schedule` on the device for shape (M, N, K) (random data from `seed`) or for the
        given qw and x. Never raises for a bad candidate: failures come back as a status."""
        from ..backend.target import get_target
        from ..kernels.compiled import CompiledKernel
        if qw is None:
            if shape is None:
                raise ValueError("measure needs shape=(M, N, K) or qw and x")
            M, N, K = shape
            qw, x = self.problem_data(schedule.bits, schedule.group_size, M, N, K, seed)
        target = self.target if target is None else get_target(target)
        t0 = time.perf_counter()
        try:
            kern = CompiledKernel(schedule, target)
        except Exception as e:  # noqa: BLE001 - a schedule that fails to compile fails this trial only
            return {"status": "compile_error", "reason": f"{type(e).__name__}: {e}"}
        client_compile_s = time.perf_counter() - t0
        objs = kern.objects
        start = time.perf_counter()
        try:
            pid = self.load_problem(qw, x)
            reply = self._request({"op": "measure", "problem": pid, "schedule": schedule.to_dict(),
                                   "target": target.to_dict(), "threads": threads, "timing": dict(timing or {}),
                                   "objects": [[k, len(v)] for k, v in objs.items()]}, b"".join(objs.values()))
        except socket.timeout:
            self.close()
            return {"status": "timeout", "reason": f"no reply from the runner within {self.timeout:g}s"}
        except (ConnectionError, OSError) as e:
            self.close()
            return {"status": "crashed", "reason": f"lost the runner connection: {e}"}
        out = reply["result"]
        out.update(client_compile_s=client_compile_s, wall_s=time.perf_counter() - start)
        return out


class RemoteMeasureWorker:
    """Drop-in for lutc.tuning.worker.MeasureWorker that measures on a remote runner.

    `problem` is the tuner's dict (bits, group_size, M, N, K, seed, cache); measure(schedule,
    timing) returns the same result dict. `device` is the remote fingerprint for the db file."""

    def __init__(self, problem: dict, runner: RemoteRunner, target=None, timeout: float | None = None):
        self.problem, self.runner, self.target = dict(problem), runner, target
        if timeout is not None:
            runner.timeout = timeout

    @property
    def device(self) -> dict:
        return self.runner.device

    def measure(self, schedule, timing: dict | None = None) -> dict:
        p = self.problem
        timing = dict(timing or {}, cache=p.get("cache", "cold"))
        return self.runner.measure(schedule, (p["M"], p["N"], p["K"]), target=self.target,
                                   threads=schedule.threads, timing=timing, seed=p.get("seed", 0))

    def close(self):
        self.runner.close()

    def __enter__(self):
        self.runner.connect()
        return self

    def __exit__(self, *exc):
        self.close()
