"""Ctrl-C at every point of the tuner's loop, then a rerun: the study ends with exactly --trials
finished trials; a trial in flight is either kept (told) or marked interrupted and run once more.

Deterministic: $LUTC_TUNE_INTERRUPT makes the tuner send itself SIGINT at a named point (as Ctrl-C
would), and a fake in-process worker measures instantly (or interrupts mid-measurement)."""
import collections
import signal
import zlib

import optuna
import pytest

from lutc.tuning import search
from lutc.tuning.search import open_storage, study_name, tune_problem
from lutc.tuning.space import Problem

P = Problem(bits=2, group_size=128, M=1, N=64, K=256)
TRIALS = 10
OPTS = dict(repeats=1, retries=0, final_rounds=1, finalists_k=2, cache="hot", prefix="i")
POINTS = ("start", "ask", "asked", "suggested", "measured", "recorded", "tell", "told")


class FakeWorker:
    """Measures instantly and deterministically; SIGINTs this process inside its n-th measure()
    when `interrupt_at` is n (the tuner is then waiting on the worker, as during a real measurement)."""

    calls = 0
    interrupt_at = None

    def __init__(self, problem, timeout):
        pass

    def measure(self, sched, timing):
        FakeWorker.calls += 1
        if FakeWorker.calls == FakeWorker.interrupt_at:
            signal.raise_signal(signal.SIGINT)
        v = 1e-3 * (1 + zlib.crc32(sched.to_json().encode()) % 997 / 997)
        return {"status": "ok", "reason": "", "value_s": v, "median_s": v, "spread": 0.01, "contention": 0.0,
                "err_max": 0.0, "err_ratio": 0.1, "threads": sched.threads}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.fixture(params=["memory"])
def tune(request, tmp_path, monkeypatch):
    """run(trials, point, interrupt_measure) tunes P in one study (in memory, or SQLite with
    params=["sqlite"]) with the fake worker; run.trials() lists the study's trials."""
    monkeypatch.setenv("LUTC_TUNING_DB", str(tmp_path / "db"))
    monkeypatch.delenv(search.INTERRUPT_ENV, raising=False)
    monkeypatch.setattr(FakeWorker, "calls", 0)
    monkeypatch.setattr(FakeWorker, "interrupt_at", None)
    monkeypatch.setattr(search, "_interrupt_hits", {})
    # SIGINT must raise KeyboardInterrupt, as in a terminal: a shell starts background jobs (and
    # some CI runners start pytest) with SIGINT ignored, and then Python installs no handler
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, old))
    if request.param == "memory":
        storage = optuna.storages.InMemoryStorage()
    else:
        storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")

    def run(trials=TRIALS, point=None, interrupt_measure=None):
        search._interrupt_hits.clear()
        FakeWorker.calls, FakeWorker.interrupt_at = 0, interrupt_measure
        if point:
            monkeypatch.setenv(search.INTERRUPT_ENV, point)
        try:
            return tune_problem(P, storage=storage, trials=trials, seed=5, db_path=tmp_path / "db",
                                make_worker=FakeWorker, **OPTS)
        finally:
            monkeypatch.delenv(search.INTERRUPT_ENV, raising=False)
    run.trials = lambda: optuna.load_study(study_name=study_name(P, "i", "hot"),
                                           storage=storage).get_trials(deepcopy=False)
    return run


def _finished(trials) -> list:
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")
            and t.user_attrs.get("status") != "interrupted"]


def _check_resumed(trials, expected=TRIALS):
    """Exactly `expected` finished trials, nothing left RUNNING or WAITING; every interrupted trial
    with parameters (suggested, or taken from the queue) was queued again once and run, and
    nothing else was queued again (a kept trial never is)."""
    states = collections.Counter(t.state.name for t in trials)
    interrupted = [t for t in trials if t.user_attrs.get("status") == "interrupted"]
    finished = _finished(trials)
    assert len(finished) == expected, (states, [t.user_attrs for t in trials])
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    assert all(t.state.name == "FAIL" for t in interrupted)
    resumed = [t for t in trials if t.user_attrs.get("warm_start") == "resumed"]
    queued = [(t.number, {**t.system_attrs.get("fixed_params", {}), **t.params}) for t in interrupted]
    queued = [(n, q) for n, q in queued if q]
    assert len(resumed) == len(queued), (queued, [(t.number, t.params) for t in resumed])
    for n, q in queued:
        assert any(u.number > n and q.items() <= u.params.items() for u in resumed), (n, q)
    return interrupted


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_interrupt_at_every_point_then_rerun(tune, point, n):
    """The n-th time the tuner reaches `point` (n=1: the first trial, the default warm start)."""
    try:
        tune(point=f"{point}:{n}")
        interrupted_run = point == "start" and n > 1      # 'start' is reached once per run
        assert interrupted_run, f"{point}:{n} was never reached"
    except KeyboardInterrupt:
        pass
    trials = tune.trials()
    assert all(t.state.name != "RUNNING" for t in trials)    # Ctrl-C never leaves a trial RUNNING
    r = tune()
    assert r.trials == TRIALS and r.best is not None
    interrupted = _check_resumed(tune.trials())
    if point in ("ask", "asked", "suggested", "measured", "recorded"):
        assert len(interrupted) == 1                          # in flight, not told: run once more
    else:
        assert not interrupted                                # before asking or already told: kept


def _measures_of_a_clean_run(tmp_path) -> int:
    """How many measurements an uninterrupted run makes (trials the space does not prune, then the
    final A/B), so the last one is surely in the A/B whatever the search space prunes."""
    FakeWorker.calls, FakeWorker.interrupt_at = 0, None
    tune_problem(P, storage=optuna.storages.InMemoryStorage(), trials=TRIALS, seed=5, db_path=tmp_path / "c",
                 make_worker=FakeWorker, **OPTS)
    return FakeWorker.calls


@pytest.mark.parametrize("n", [1, 2, 3, 5, "last"])
def test_interrupt_mid_measurement_then_rerun(tune, n, tmp_path):
    """SIGINT while the worker measures the n-th schedule ("last": in the final A/B)."""
    if n == "last":
        n = _measures_of_a_clean_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        tune(interrupt_measure=n)
    in_trials = len(_finished(tune.trials())) < TRIALS
    r = tune()
    assert r.trials == TRIALS
    interrupted = _check_resumed(tune.trials())
    assert len(interrupted) == in_trials          # in flight: run once more; in the A/B: nothing to redo


def test_interrupted_warm_start_is_run_after_all(tune):
    """Interrupted between ask and suggest, the default warm start (taken from the queue, no
    parameters suggested yet) is queued again with its parameters, not lost."""
    with pytest.raises(KeyboardInterrupt):
        tune(point="asked:1")
    first = tune.trials()[0]
    assert first.user_attrs["warm_start"] == "default" and first.user_attrs["status"] == "interrupted"
    tune()
    trials = tune.trials()
    _check_resumed(trials)
    assert [t.params for t in trials if t.user_attrs.get("status") not in ("interrupted",)][0] == \
        first.system_attrs["fixed_params"]


@pytest.mark.parametrize("tune", ["sqlite"], indirect=True)
def test_repeated_interrupts_then_rerun(tune):
    """Interrupted again and again at different points, the study still ends with exactly --trials."""
    for point in ("measured:2", "ask:1", "suggested:1", "recorded:3", "tell:1", "asked:2"):
        try:
            tune(point=point)
        except KeyboardInterrupt:
            pass
    tune()
    assert len(_check_resumed(tune.trials())) >= 4


def test_rerun_of_a_finished_study_queues_nothing(tune, tmp_path):
    """A rerun of a finished study must not enqueue warm starts it will never run (the db's entry
    may be an A/B winner that was never a trial, e.g. the best schedule at another thread count)."""
    from lutc.ops import default_schedule
    from lutc.tuning.db import db_file, make_entry, updating
    from lutc.tuning.device import host_fingerprint, usable_cores
    tune()
    fp, cores = host_fingerprint(), usable_cores()
    s = default_schedule(2, 128, 1).replace(g=2, bn=16, unroll=2, threads=1)
    params = search.params_of(s, cores)
    assert params not in [t.params for t in tune.trials()]

    def put_entry():     # as if the last A/B's winner were s (the A/B of every run rewrites the entry)
        with updating(db_file(tmp_path / "db", fp["id"]), fp) as db:
            db.put(make_entry(s, P.M, P.N, P.K, 1e-4, 2e-4, "measured"))
    put_entry()
    tune()
    _check_resumed(tune.trials())
    put_entry()
    tune(trials=TRIALS + 1)                          # a larger budget runs it
    trials = tune.trials()
    _check_resumed(trials, TRIALS + 1)
    assert [t.params for t in trials if t.user_attrs.get("warm_start") == "db"] == [params]
