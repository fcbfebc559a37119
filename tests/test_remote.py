"""The remote runner on loopback: protocol framing and limits, authentication, measurement, refusals, CLI."""
import json
import os
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import quant
from lutc import Schedule
from lutc.remote import RemoteMeasureWorker, RemoteRunner, RunnerError
from lutc.remote.problem import decode_problem, encode_problem, timing_options
from lutc.remote.protocol import (AuthenticationError, Channel, ProtocolError, parse_address, read_token,
                                  session_key)
from lutc.remote.runner import Runner
from lutc.tuning.device import host_fingerprint

TOKEN = b"0123456789abcdef-test-token"
FAST = {"repeats": 2, "retries": 0, "warmup_s": 0.0, "min_repeat_s": 0.001, "cache": "hot"}


@pytest.fixture(scope="module")
def runner():
    """A host runner on loopback, each session in its own process (as `lutc runner` runs)."""
    r = Runner(TOKEN, max_payload=8 << 20)
    t = threading.Thread(target=r.serve, daemon=True)
    t.start()
    yield r
    r.close()


@pytest.fixture
def inproc_runner():
    """A runner serving sessions in this process, so tests can patch what it does."""
    r = Runner(TOKEN, isolate=False)
    t = threading.Thread(target=r.serve, daemon=True)
    t.start()
    yield r
    r.close()


def _client(r, token=TOKEN, **kw):
    return RemoteRunner(*r.address, token, **kw)


# ---------------------------------------------------------------------- protocol units


def _pair(max_payload=1 << 20):
    a, b = socket.socketpair()
    client, server = Channel(a, False, max_payload), Channel(b, True, max_payload)
    key = session_key(TOKEN, b"s" * 32, b"c" * 32)
    client.set_key(key)
    server.set_key(key)
    return client, server


class _Capture:
    def __init__(self):
        self.data = []

    def sendall(self, data):
        self.data.append(bytes(data))


def _frame(channel, header, payload=b""):
    """The bytes channel.send puts on the wire (the channel's sequence number advances)."""
    real, channel.sock = channel.sock, _Capture()
    try:
        channel.send(header, payload)
        return b"".join(channel.sock.data)
    finally:
        channel.sock = real


def test_frames_roundtrip_and_reject_tampering_replay_and_reflection():
    client, server = _pair()
    client.send({"op": "x", "n": 1}, b"payload")
    assert server.recv() == ({"op": "x", "n": 1}, b"payload")
    tampered = bytearray(_frame(client, {"op": "y"}, b"abc"))
    tampered[-1] ^= 1
    client.sock.sendall(bytes(tampered))
    with pytest.raises(AuthenticationError):
        server.recv()

    client, server = _pair()
    frame = _frame(client, {"op": "z"})
    client.sock.sendall(frame)
    server.recv()
    client.sock.sendall(frame)                 # the same frame again: a replay
    with pytest.raises(AuthenticationError):
        server.recv()

    client, server = _pair()
    client.sock.sendall(_frame(server, {"ok": True}))   # the server's own frame, reflected back
    with pytest.raises(AuthenticationError):
        server.recv()


def test_frames_are_size_bounded_before_allocation():
    client, server = _pair(max_payload=1000)
    with pytest.raises(ProtocolError, match="exceeds the 1000-byte limit"):
        client.send({}, b"x" * 1001)
    big = Channel(client.sock, False, max_payload=10 << 20)
    big.set_key(b"k")
    big.send({}, b"x" * 5000)
    with pytest.raises(ProtocolError, match="payload of 5000 bytes exceeds"):
        server.recv()
    a, b = socket.socketpair()
    a.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + bytes(64))
    with pytest.raises(ProtocolError, match="bad magic"):
        Channel(b, True).recv()
    with pytest.raises(ProtocolError, match="header of"):
        client.send({"x": "y" * (70 << 10)})


def test_problem_encoding_roundtrip_and_checks():
    rng = np.random.default_rng(0)
    for bits in (1, 3, 4):
        qw = quant.quantize(rng.standard_normal((13, 70)).astype(np.float32), bits, 32, method="hlq")
        x = rng.standard_normal((3, 70)).astype(np.float32)
        fields, payload = encode_problem(qw, x)
        qw2, x2 = decode_problem(fields, payload)
        np.testing.assert_array_equal(qw2.codes, qw.codes)
        np.testing.assert_array_equal(qw2.scales, qw.scales)
        np.testing.assert_array_equal(qw2.zeros, qw.zeros)
        np.testing.assert_array_equal(x2, x)
    with pytest.raises(ProtocolError, match="section sizes"):
        decode_problem(dict(fields, N=14), payload)
    with pytest.raises(ProtocolError, match="sections cover"):
        decode_problem(fields, payload + b"x")
    with pytest.raises(ProtocolError, match="bits must be an int"):
        decode_problem(dict(fields, bits=9), payload)
    with pytest.raises(ProtocolError, match="repeats must be"):
        timing_options({"repeats": 10 ** 6})
    with pytest.raises(ProtocolError, match="unknown option"):
        timing_options({"exec": "rm -rf /"})


def test_addresses_default_to_loopback_and_tokens_have_a_minimum(tmp_path):
    assert parse_address(":7070") == ("127.0.0.1", 7070)
    assert parse_address("7070") == ("127.0.0.1", 7070)
    assert parse_address("10.0.0.5:80") == ("10.0.0.5", 80)
    assert Runner(TOKEN).address[0] == "127.0.0.1"
    short = tmp_path / "t"
    short.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_token(short)


# ---------------------------------------------------------------------- loopback sessions


def test_loopback_measures_and_verifies(runner):
    with _client(runner) as c:
        assert c.device["id"] == host_fingerprint()["id"]
        for knobs in ({}, {"lut_dtype": "float16", "g": 3, "bn": 16}):
            sched = Schedule.make(bits=2, group_size=64, **knobs)
            r = c.measure(sched, (2, 96, 200), timing=FAST, threads=1)
            assert r["status"] == "ok", r
            assert r["median_s"] > 0 and r["err_ratio"] <= 1.0 and r["threads"] == 1
        rng = np.random.default_rng(1)
        qw = quant.quantize(rng.standard_normal((40, 64)).astype(np.float32), 4, 32, method="hlq")
        x = rng.standard_normal((1, 64)).astype(np.float32)
        r = c.measure(Schedule.make(bits=4, group_size=32, lut_dtype="float32"), qw=qw, x=x, timing=FAST)
        assert r["status"] == "ok" and r["err_max"] < 1e-3


def test_client_mirrors_the_runners_problem_eviction(runner):
    rng = np.random.default_rng(3)
    probs = [(quant.quantize(rng.standard_normal((16, 64)).astype(np.float32), 2, 64, method="rtn"),
              rng.standard_normal((1, 64)).astype(np.float32)) for _ in range(3)]
    sched = Schedule.make(bits=2, group_size=64, bn=16)
    with _client(runner) as c:
        for qw, x in probs + probs[:1]:   # the first was evicted on both ends and is sent again
            assert c.measure(sched, qw=qw, x=x, timing=FAST)["status"] == "ok"


def test_wrong_token_is_rejected_and_the_runner_keeps_serving(runner):
    with pytest.raises(RunnerError, match="rejected this token"):
        _client(runner, token=b"not-the-right-token-at-all").connect()
    with _client(runner) as c:
        assert c.info["software"]["lutc"]


def test_oversized_message_is_refused(runner):
    """The fixture's runner accepts 8 MiB messages; a 9.8 MB problem is refused unread."""
    qw = quant.quantize(np.ones((1, 4096), np.float32), 2, 128, method="rtn")
    with _client(runner) as c:
        with pytest.raises((RunnerError, ConnectionError)) as e:
            c.load_problem(qw, np.ones((600, 4096), np.float32))
        if isinstance(e.value, RunnerError):
            assert "exceeds the 8388608-byte limit" in str(e.value)
    with _client(runner) as c:  # and it goes on serving
        assert c.measure(Schedule.make(bits=2, group_size=64), (1, 32, 64), timing=FAST)["status"] == "ok"


def test_refuses_foreign_objects_and_other_targets(runner):
    sched = Schedule.make(bits=2, group_size=64)
    with _client(runner) as c:
        r = c.measure(sched, (1, 64, 128), target="m2" if not c.target.is_aarch64 else "x86-avx2", timing=FAST)
        assert r["status"] == "unsupported_target" and "cannot run" in r["reason"]
        qw, x = c.problem_data(2, 64, 1, 64, 128)
        pid = c.load_problem(qw, x)
        evil = b"\x7fELF" + os.urandom(200)
        reply = c._request({"op": "measure", "problem": pid, "schedule": sched.to_dict(),
                            "target": c.target.to_dict(), "threads": 1, "timing": FAST,
                            "objects": [["tables", 100], ["gemm", 104]]}, evil)
        assert reply["result"]["status"] == "rejected"
        assert "differ from this runner's own build" in reply["result"]["reason"]
        with pytest.raises(RunnerError, match="unknown op"):
            c._request({"op": "exec", "cmd": "id"})


def test_runner_verifies_results_against_the_reference(inproc_runner, monkeypatch):
    """A kernel computing with the wrong weights is reported 'inaccurate', not timed."""
    from lutc.kernels.compiled import CompiledKernel
    real_pack = CompiledKernel.pack

    def wrong_pack(self, qw):
        return real_pack(self, quant.QuantizedTensor(qw.bits, qw.group_size, qw.shape, qw.codes & 1,
                                                     qw.scales, qw.zeros))
    monkeypatch.setattr(CompiledKernel, "pack", wrong_pack)
    with _client(inproc_runner) as c:
        r = c.measure(Schedule.make(bits=2, group_size=64), (2, 64, 256), timing=FAST)
    assert r["status"] == "inaccurate" and "exceeds" in r["reason"]


def test_remote_worker_is_a_drop_in_for_the_tuner(runner):
    problem = {"bits": 3, "group_size": 64, "M": 1, "N": 128, "K": 256, "seed": 0, "cache": "hot"}
    with RemoteMeasureWorker(problem, _client(runner)) as w:
        # the timing options tune_problem sends (with --stat min)
        r = w.measure(Schedule.make(bits=3, group_size=64, threads=1),
                      {"repeats": 2, "retries": 0, "stat": "min", "min_repeat_s": 0.002})
        assert w.device["id"] == host_fingerprint()["id"]
    for key in ("status", "reason", "median_s", "value_s", "stat", "spread", "err_ratio", "compile_s", "wall_s",
                "threads", "contention", "attempts"):
        assert key in r, key
    assert r["status"] == "ok" and r["stat"] == "min"


# ---------------------------------------------------------------------- CLI


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lutc.cli", *args], capture_output=True, text=True, **kw)


def test_cli_runner_serves_and_connect_measures(tmp_path):
    from lutc.cli import main
    tok = tmp_path / "token"
    assert main(["runner", "--new-token", str(tok)]) == 0
    assert os.stat(tok).st_mode & 0o777 == 0o600 and len(read_token(tok)) == 64
    proc = subprocess.Popen([sys.executable, "-m", "lutc.cli", "runner", "--listen", "127.0.0.1:0",
                             "--token-file", str(tok), "--once"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert m, line
        r = _cli("runner", "--connect", f"127.0.0.1:{m.group(1)}", "--token-file", str(tok), "--bits", "2",
                 "--group-size", "64", "--shape", "1x64x128", "--set", "bn=16", "--repeats", "2", timeout=120)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["status"] == "ok" and out["schedule"]["bn"] == 16 and out["median_s"] > 0
        assert proc.wait(timeout=60) == 0   # --once: exits after the session
    finally:
        proc.kill()
        proc.stderr.close()

def test_cli_runner_needs_a_token(capsys):
    from lutc.cli import main
    assert main(["runner", "--listen", "127.0.0.1:0"]) == 2
    assert "--token-file is required" in capsys.readouterr().err
