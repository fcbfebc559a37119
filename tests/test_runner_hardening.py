"""Issue 13 findings 10 and 11: the runner under hostile or greedy peers (loopback only, bounded in time),
and a fuzz suite for its frames: every outcome is a ProtocolError or success."""
import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import quant
from lutc import Schedule
from lutc.remote import RemoteRunner, RunnerError
from lutc.remote.problem import decode_problem, encode_problem, timing_options
from lutc.remote.protocol import MAGIC, PROTOCOL_VERSION, Channel, ProtocolError, session_key
from lutc.remote.runner import Runner

TOKEN = b"0123456789abcdef-test-token"
FAST = {"repeats": 2, "retries": 0, "warmup_s": 0.0, "min_repeat_s": 0.001, "cache": "hot"}
_PREFIX = struct.Struct("!4sBBHIQ")


def _start(**limits):
    """An in-process runner on loopback with short limits (falls back to the defaults of a runner
    without them, so the tests show the old behaviour instead of a TypeError)."""
    try:
        r = Runner(TOKEN, isolate=False, **limits)
    except TypeError:
        r = Runner(TOKEN, isolate=False)
    threading.Thread(target=r.serve, daemon=True).start()
    return r


@pytest.fixture
def quick():
    r = _start(handshake_timeout=1.0, request_timeout=2.0, max_problem_bytes=64 << 20)
    yield r
    r.close()


def _client(r, **kw):
    kw.setdefault("timeout", 6.0)
    kw.setdefault("connect_timeout", 3.0)
    return RemoteRunner(*r.address, TOKEN, **kw)


def _raw(r):
    s = socket.create_connection(r.address, timeout=5)
    return s


def _closed_within(sock, seconds) -> bool:
    """True if the peer closes `sock` within `seconds` (whatever it sends before)."""
    end = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < end:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


# ----- finding 10: handshake deadline, pre-auth limits, concurrency -------------------------
def test_a_silent_peer_blocks_no_one(quick):
    idle = _raw(quick)
    try:
        t0 = time.monotonic()
        with _client(quick) as c:
            assert c.info["software"]["lutc"]
        assert time.monotonic() - t0 < 5
    finally:
        idle.close()


def test_a_trickling_peer_is_cut_at_the_handshake_deadline(quick):
    s = _raw(quick)
    try:
        stop = time.monotonic() + 4
        closed = False
        hello = _PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 0, 100, 0)
        i = 0
        s.settimeout(0.25)
        while time.monotonic() < stop and not closed:
            try:
                s.sendall(hello[i % len(hello):i % len(hello) + 1])   # one byte at a time
                i += 1
                if s.recv(65536) == b"":
                    closed = True
            except socket.timeout:
                pass
            except OSError:
                closed = True
        assert closed, "the runner kept a peer that never completed its hello"
    finally:
        s.close()


def test_the_hello_cannot_declare_a_big_payload(quick):
    s = _raw(quick)
    try:
        s.sendall(_PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 0, 100, 256 << 20))
        assert _closed_within(s, 2.5), "a 256 MiB hello was accepted before its MAC was checked"
    finally:
        s.close()


def _hello_frame(header_bytes: bytes) -> bytes:
    return _PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 0, len(header_bytes), 0) + bytes(32) + header_bytes


def test_a_deeply_nested_header_is_a_protocol_error_and_the_runner_survives(quick):
    a, b = socket.socketpair()
    a.sendall(_hello_frame(b"[" * 3000 + b"]" * 3000))
    with pytest.raises(ProtocolError):
        Channel(b, True).recv(authenticated=False)
    s = _raw(quick)
    try:
        s.sendall(_hello_frame(b"[" * 2000 + b"]" * 2000))
        assert _closed_within(s, 3)
    finally:
        s.close()
    with _client(quick) as c:           # still serving
        assert c.info["software"]["lutc"]


def test_two_clients_are_served_at_once(quick):
    with _client(quick) as first:
        assert first.info
        t0 = time.monotonic()
        with _client(quick) as second:
            r = second.measure(Schedule.make(bits=2, group_size=64), (1, 32, 64), timing=FAST)
        assert r["status"] == "ok" and time.monotonic() - t0 < 5
        r = first.measure(Schedule.make(bits=2, group_size=64), (1, 32, 64), timing=FAST)
        assert r["status"] == "ok"


# ----- finding 11: bounded requests ---------------------------------------------------------
def _problem_request(c, bits, gs, M, N, K):
    """A well-formed problem message of the given sizes (zero codes, unit scales)."""
    qw = quant.QuantizedTensor(bits, gs, (N, K), np.zeros((N, K), np.uint8),
                               np.ones((bits, N, -(-K // gs)), np.float16), np.zeros((N, -(-K // gs)), np.float16))
    fields, payload = encode_problem(qw, np.ones((M, K), np.float32))
    return c._request(dict(op="problem", **fields), payload)


def test_group_size_far_beyond_k_is_refused(quick):
    with _client(quick) as c:
        with pytest.raises(RunnerError, match="group_size 1048576 exceeds"):
            _problem_request(c, 2, 1 << 20, 8, 8, 64)


def test_a_problem_needing_more_memory_than_allowed_is_refused(quick):
    """M x N float64 reference: 2048 x 4096 x 48 bytes of float64 work is over the 64 MiB set here."""
    with _client(quick) as c:
        with pytest.raises(RunnerError, match="needs about .* MiB here, over this runner's limit"):
            _problem_request(c, 2, 64, 2048, 4096, 64)
        assert c.measure(Schedule.make(bits=2, group_size=64), (1, 32, 64), timing=FAST)["status"] == "ok"


def test_default_limits_refuse_a_terabyte_reference():
    from lutc.remote.runner import Limits, check_problem_limits
    with pytest.raises(ProtocolError, match="over this runner's limit"):
        check_problem_limits({"bits": 1, "group_size": 1, "M": 1 << 16, "N": 1 << 16, "K": 1}, Limits())
    check_problem_limits({"bits": 4, "group_size": 128, "M": 128, "N": 11008, "K": 4096}, Limits())  # llama-2-7b


@pytest.mark.parametrize("edit", [{"cpu": "znver4-but-different"}, {"vector_bits": 4096},
                                  {"features": "+sse2,+made-up-feature"}, {"name": "x" * 50}])
def test_arbitrary_target_descriptions_are_refused(quick, edit):
    sched = Schedule.make(bits=2, group_size=64)
    with _client(quick) as c:
        qw, x = c.problem_data(2, 64, 1, 32, 64)
        pid = c.load_problem(qw, x)
        reply = c._request({"op": "measure", "problem": pid, "schedule": sched.to_dict(),
                            "target": dict(c.target.to_dict(), **edit), "threads": 1, "timing": FAST,
                            "objects": [["tables", 0], ["gemm", 0]]})
        assert reply["result"]["status"] == "invalid"
        assert "named target" in reply["result"]["reason"]


def test_the_session_kernel_cache_and_the_compiler_cache_are_bounded(monkeypatch):
    import lutc.compiler
    from lutc.backend.target import runnable
    from lutc.remote.runner import MAX_KERNELS, Session
    monkeypatch.setattr(lutc.compiler, "MEMORY_CACHE_SIZE", 2 * MAX_KERNELS)
    session = Session()
    target = runnable("host")
    n = 0
    for bn in (16, 32, 64):
        for unroll in (1, 2, 4, 8):
            for interleave in ("chunk", "plane"):
                session._kernel(Schedule.make(bits=1, group_size=32, bn=bn, unroll=unroll, g=2,
                                                  interleave=interleave), target)
                n += 1
    assert n > 2 * MAX_KERNELS + 1
    assert len(session.kernels) <= MAX_KERNELS
    assert len(lutc.compiler._MEMORY_CACHE) <= 2 * MAX_KERNELS


def test_a_request_over_the_time_limit_gets_an_error_and_ends_the_session(quick, monkeypatch):
    import lutc.remote.runner as R
    real = R.decode_problem

    def slow(h, payload):
        time.sleep(4)
        return real(h, payload)
    monkeypatch.setattr(R, "decode_problem", slow)
    with _client(quick) as c:
        t0 = time.monotonic()
        with pytest.raises((RunnerError, OSError)) as e:
            _problem_request(c, 2, 64, 1, 32, 64)
        assert time.monotonic() - t0 < 3.5
        assert "exceeded this runner's limit" in str(e.value)


# ----- fuzz: frames, headers, problems, timing options ---------------------------------------
def _json_values():
    leaves = st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=8)
    return st.recursive(leaves,
                        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                        max_leaves=10)


@given(data=st.binary(max_size=400), authenticated=st.booleans())
def test_fuzz_raw_bytes_into_a_channel(data, authenticated):
    a, b = socket.socketpair()
    try:
        b.settimeout(2)
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        ch = Channel(b, True, max_payload=1 << 16)
        ch.set_key(session_key(TOKEN, b"s" * 32, b"c" * 32))
        try:
            h, p = ch.recv(authenticated=authenticated, max_header=4096, max_payload=1 << 12)
            assert isinstance(h, dict)
        except ProtocolError:
            pass
    finally:
        a.close()
        b.close()


@given(header=st.one_of(_json_values().map(lambda v: json.dumps(v).encode()), st.binary(max_size=200),
                        st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
                        st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)),
       payload=st.binary(max_size=64), flip=st.integers(-1, 60))
def test_fuzz_authenticated_frames(header, payload, flip):
    """Well-framed messages with arbitrary headers (and sometimes a flipped bit): ProtocolError or a dict."""
    a, b = socket.socketpair()
    try:
        b.settimeout(2)
        key = session_key(TOKEN, b"s" * 32, b"c" * 32)
        client = Channel(a, False)
        client.set_key(key)
        prefix = _PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 0, len(header), len(payload))
        frame = bytearray(prefix + client._mac(b"C", 0, prefix, header, payload) + header + payload)
        if 0 <= flip < len(frame):
            frame[flip] ^= 0x10
        a.sendall(bytes(frame))
        a.shutdown(socket.SHUT_WR)
        server = Channel(b, True, max_payload=1 << 16)
        server.set_key(key)
        try:
            h, p = server.recv()
            assert isinstance(h, dict)
        except ProtocolError:
            pass
    finally:
        a.close()
        b.close()


@given(fields=st.fixed_dictionaries({}, optional={k: st.one_of(st.integers(-3, 300), _json_values())
                                                   for k in ("bits", "group_size", "M", "N", "K", "sections")}),
       payload=st.binary(max_size=300))
def test_fuzz_problem_headers(fields, payload):
    from lutc.remote.runner import Limits, check_problem_limits
    try:
        check_problem_limits(fields, Limits())
        decode_problem(fields, payload)
    except ProtocolError:
        pass


@given(t=_json_values())
def test_fuzz_timing_options(t):
    try:
        timing_options(t)
    except ProtocolError:
        pass


def test_a_session_ended_by_its_time_limit_frees_the_measurement_lock():
    """The request clock of an isolated session exits its process; it must not leave the lock that
    serializes all sessions' measurements held (nor may a crashed session process)."""
    from lutc.remote.runner import DeviceLock, _RequestClock
    lock = DeviceLock()
    a, b = socket.socketpair()
    try:
        ch = Channel(a, True)
        exits = []
        clock = _RequestClock(ch, 0.2, True, "test", lock, exit=exits.append)
        assert lock.acquire(timeout=1)
        clock.start("measure")
        time.sleep(0.6)
        assert exits == [3]
        assert lock.acquire(timeout=1), "the lock stayed held after the session's process exited"
        lock.release()
        # a session process that died holding it: the runner frees it by pid
        assert lock.acquire(timeout=1)
        import os
        assert lock.release_if_held_by(os.getpid()) and lock.acquire(timeout=1)
        lock.release()
        assert not lock.release_if_held_by(12345)
    finally:
        a.close()
        b.close()


def test_sessions_beyond_the_limit_wait_then_get_a_clean_refusal():
    r = _start(handshake_timeout=1.0, max_sessions=1, queue_timeout=1.0)
    try:
        with _client(r) as first:
            assert first.info
            t0 = time.monotonic()
            with pytest.raises(RunnerError, match="runner busy: 1 sessions busy"):
                _client(r).connect()
            assert time.monotonic() - t0 < 5
        with _client(r) as again:        # the slot is free again
            assert again.info
    finally:
        r.close()
