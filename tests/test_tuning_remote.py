"""`lutc tune --runner`: the tuner measuring through a loopback `lutc runner`, and `--estimate`."""
import threading

import pytest

from lutc.tuning.db import TuningDB, db_file
from lutc.tuning.search import tune_problem
from lutc.tuning.space import Problem

TOKEN = b"0123456789abcdef-tune-token"


@pytest.fixture(scope="module")
def runner():
    from lutc.remote.runner import Runner
    r = Runner(TOKEN, max_payload=8 << 20)
    threading.Thread(target=r.serve, daemon=True).start()
    yield r
    r.close()


def test_tune_problem_measures_on_a_runner(runner, tmp_path, monkeypatch):
    from lutc.remote import RemoteMeasureWorker, RemoteRunner
    monkeypatch.setenv("LUTC_TUNING_DB", str(tmp_path / "none"))
    client = RemoteRunner(*runner.address, TOKEN)
    info = client.connect()
    p = Problem(2, 128, 1, 64, 256)
    r = tune_problem(p, storage=f"sqlite:///{tmp_path / 's.db'}", trials=3, prefix="rem", db_path=tmp_path,
                     repeats=2, retries=0, final_rounds=1, finalists_k=1, cache="hot",
                     make_worker=lambda prob, timeout: RemoteMeasureWorker(prob, client, timeout=timeout),
                     device=client.device, cores=int(info["cores"]))
    assert r.trials == 3 and r.best is not None and r.time_s > 0
    assert r.study.startswith("rem/") and "/m1/64x256/" in r.study
    e = TuningDB.load(db_file(tmp_path, client.device["id"])).get("lut_gemm", 2, 128, 1, 64, 256)
    assert e["source"] == "measured" and e["trials"] == 3


def test_cli_estimate_records_estimated_entries_and_keeps_measured_ones(tmp_path, capsys):
    from lutc.cli import main
    from lutc.remote.estimate import device_fingerprint
    assert main(["tune", "--target", "aarch64-linux", "--estimate", "--shapes", "576x576,1536x576", "--bits", "2",
                 "--m", "1", "--db", str(tmp_path)]) == 0
    assert "static estimates, not measurements" in capsys.readouterr().out
    path = db_file(tmp_path, device_fingerprint("aarch64-linux")["id"])
    db = TuningDB.load(path)
    assert {e["source"] for e in db.entries.values()} == {"estimated"} and len(db.entries) == 2
    e = db.get("lut_gemm", 2, 128, 1, 576, 576)
    db.put(dict(e, source="measured", time_s=1.0))
    db.save()
    assert main(["tune", "--target", "aarch64-linux", "--estimate", "--shapes", "576x576", "--bits", "2",
                 "--m", "1", "--db", str(tmp_path)]) == 0
    assert "kept the measured entry" in capsys.readouterr().out
    assert TuningDB.load(path).get("lut_gemm", 2, 128, 1, 576, 576)["source"] == "measured"


def test_cli_measures_natively_a_target_whose_code_runs_here(capsys, tmp_path):
    """`--target m2` on an Apple-silicon Mac measures natively, as for host; x86-avx2 here is the same case."""
    from lutc.backend.target import get_target, native_mismatch
    from lutc.cli import main
    from lutc.tuning.db import TuningDB, db_file
    from lutc.tuning.device import host_fingerprint
    if native_mismatch(get_target("x86-avx2")) is not None:
        pytest.skip(f"x86-avx2 code cannot run here: {native_mismatch(get_target('x86-avx2'))}")
    assert main(["tune", "--target", "x86-avx2", "--shapes", "64x256", "--bits", "2", "--m", "1",
                 "--trials", "2", "--quiet", "--db", str(tmp_path), "--storage", f"sqlite:///{tmp_path}/s.db",
                 "--repeats", "3", "--retries", "0", "--final-rounds", "1", "--cache", "hot"]) == 0
    assert "runs natively on this machine" in capsys.readouterr().err
    db = TuningDB.load(db_file(tmp_path, host_fingerprint()["id"]))
    assert [e["source"] for e in db.entries.values()] == ["measured"]


def test_cli_refuses_targets_it_cannot_measure(capsys):
    from lutc.cli import main
    assert main(["tune", "--shapes", "64x256", "--target", "aarch64-linux"]) == 2
    assert "--runner" in capsys.readouterr().err
    assert main(["tune", "--shapes", "64x256", "--runner", "127.0.0.1:9"]) == 2
    assert "token" in capsys.readouterr().err
