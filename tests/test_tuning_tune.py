"""End to end: tune_problem records measured entries, resumes studies, survives failing candidates; the CLI."""
import json
import os
import signal
import subprocess
import sys

import optuna
import pytest
from _liveness import LIVENESS_S, run_live

from lutc.tuning.db import TuningDB, db_file
from lutc.tuning.device import host_device_id
from lutc.tuning.search import open_storage, study_name, tune_problem
from lutc.tuning.space import Problem
from lutc.tuning.worker import MeasureWorker

FAST = dict(repeats=3, retries=0, final_rounds=1, finalists_k=2, cache="hot", timeout=LIVENESS_S)
P = Problem(bits=2, group_size=128, M=1, N=64, K=256)


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


def test_tune_records_an_entry_and_resumes_without_rerunning(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTC_TUNING_DB", str(tmp_path / "none"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = tune_problem(P, storage=url, trials=5, seed=3, prefix="t", db_path=tmp_path, **FAST)
    assert r.trials == 5 and r.ran == 5 and r.best is not None and r.time_s > 0 and r.default_time_s > 0
    trials = _trials(url, study_name(P, "t", "hot"))
    assert trials[0].user_attrs["warm_start"] == "default"             # warm start: the default first
    assert all(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
    e = TuningDB.load(db_file(tmp_path, host_device_id())).get("lut_gemm", 2, 128, 1, 64, 256)
    assert e["source"] == "measured" and e["trials"] == 5 and e["time_s"] == pytest.approx(r.time_s)
    assert e["default_time_s"] == pytest.approx(r.default_time_s) and e["err_ratio"] <= 1
    r2 = tune_problem(P, storage=url, trials=7, seed=3, prefix="t", db_path=tmp_path, **FAST)
    assert r2.ran == 2 and len(_trials(url, study_name(P, "t", "hot"))) == 7


def test_seeded_search_is_reproducible(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTC_TUNING_DB", str(tmp_path / "none"))
    runs = []
    for i in range(2):
        url = f"sqlite:///{tmp_path / f'r{i}.db'}"
        tune_problem(P, storage=url, trials=4, seed=11, prefix="r", db_path=None, **FAST)
        runs.append([t.params for t in _trials(url, study_name(P, "r", "hot"))])
    assert runs[0] == runs[1]                      # the startup trials come from the seeded sampler


class _HangTimeout(MeasureWorker):
    """The liveness bound for real work (compiling, timing); a short timeout only for the
    candidate that hangs, so a loaded machine cannot turn real work into a 'timeout'."""

    def measure(self, schedule, timing=None):
        self.timeout = 2 if schedule.lut_dtype == "float32" else LIVENESS_S
        return super().measure(schedule, timing)


def test_failing_candidates_fail_one_trial_each(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTC_TUNING_DB", str(tmp_path / "none"))
    monkeypatch.setenv("LUTC_TUNE_FAULTS", "lut_dtype=float16:crash,lut_dtype=float32:hang")
    url = f"sqlite:///{tmp_path / 'f.db'}"
    study = optuna.create_study(study_name=study_name(P, "f", "hot"), storage=open_storage(url))
    base = {"g": 4, "bn": 16, "unroll": 2, "mb": 1, "interleave": "chunk", "threads": 1, "lut_centered": True,
            "lut_scale_ratio": 64, "path": "lut", "dot_bm": 8, "dot_ns": 16, "act_block": 128, "act_residual": True,
            "lut_pair": False, "lut_fine_planes": 0, "prefetch": 0}
    for dt in ("float16", "float32", "int8"):       # float tables: the one canonical scale block (the group)
        study.enqueue_trial(dict(base, lut_dtype=dt, lut_scale_block=128 if dt != "int8" else 16))
    r = tune_problem(P, storage=url, trials=3, seed=0, prefix="f", db_path=None, make_worker=_HangTimeout,
                     **dict(FAST, timeout=LIVENESS_S))
    by = {t.params["lut_dtype"]: t for t in _trials(url, study.study_name)[:3]}
    assert by["float16"].state.name == "FAIL" and by["float16"].user_attrs["status"] == "crashed"
    assert "SIGSEGV" in by["float16"].user_attrs["reason"]
    assert by["float32"].state.name == "FAIL" and by["float32"].user_attrs["status"] == "timeout"
    assert by["int8"].state.name == "COMPLETE" and r.best.lut_dtype == "int8"


def _lutc(*args):
    return [sys.executable, "-m", "lutc.cli", *args]


def _sigint_default():
    """In the child: SIGINT as in a terminal, even when pytest runs with it ignored (a shell's
    background job): Python then installs its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("point", ["measured:2", "ask:3"])
def test_cli_ctrl_c_then_rerun_resumes_the_same_study(tmp_path, point):
    """Ctrl-C at a fixed point ($LUTC_TUNE_INTERRUPT: SIGINT to the tuner, deterministically; the
    in-process matrix of points is in test_tuning_interrupt.py), then the same command again."""
    env = dict(os.environ, LUTC_TUNING_DB=str(tmp_path / "db"))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    cmd = _lutc("tune", "--shapes", "64x256", "--bits", "2", "--m", "1", "--trials", "6", "--storage", url,
                "--study", "c", "--cache", "hot", "--retries", "0", "--repeats", "3", "--quiet")
    first = run_live(cmd, env=dict(env, LUTC_TUNE_INTERRUPT=point), preexec_fn=_sigint_default)
    assert first.returncode == 130, first.stderr
    assert "rerun the same command to resume" in first.stderr
    name = study_name(P, "c", "hot")
    trials = _trials(url, name)
    assert all(t.state.name != "RUNNING" for t in trials)
    assert [t.user_attrs.get("status") for t in trials].count("interrupted") == 1
    done = run_live(cmd, env=env)
    assert done.returncode == 0, done.stderr
    trials = _trials(url, name)
    states = [t.state.name for t in trials]
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")
                and t.user_attrs.get("status") != "interrupted"]
    assert len(finished) == 6 and "RUNNING" not in states and "WAITING" not in states, states
    assert "tuned ms" in done.stdout and "64x256" in done.stdout
    db = json.loads((tmp_path / "db" / f"{host_device_id()}.json").read_text())
    assert "lut_gemm/w2/g128/m1/64x256" in db["entries"]


def test_cli_rejects_bad_arguments(capsys):
    from lutc.cli import main
    assert main(["tune", "--shapes", "64by256"]) == 2
    assert "expected NxK" in capsys.readouterr().err
    assert main(["tune", "--model", "gpt-5"]) == 2
    assert main(["tune", "--shapes", "64x256", "--bits", "5"]) == 2


def test_orphaned_running_trials_of_dead_tuners_are_interrupted_and_requeued(tmp_path):
    from lutc.tuning.search import _finished, fail_orphans
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = __import__("socket").gethostname()
    t1, t2 = study.ask({"x": optuna.distributions.IntDistribution(0, 9)}), study.ask()
    t1.set_user_attr("worker", f"{host}:{dead.stdout.strip()}")
    t2.set_user_attr("worker", f"{host}:{os.getpid()}")                # alive: left running
    fail_orphans(study)
    by = {t.number: t for t in study.get_trials()}
    assert by[t1.number].state.name == "FAIL" and by[t2.number].state.name == "RUNNING"
    assert by[t1.number].user_attrs["status"] == "interrupted" and not _finished(study)   # not counted
    again = study.ask()
    assert again.suggest_int("x", 0, 9) == t1.params["x"]                 # queued again, once
    assert study.get_trials()[again.number].user_attrs["warm_start"] == "orphaned"
    assert [t.state.name for t in study.get_trials()].count("WAITING") == 0
