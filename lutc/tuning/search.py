"""The Optuna search of one problem: storage, study naming, warm start, ask/tell loop, final A/B, db write."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import socket
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

from ..schedule import Schedule
from .db import TuningDB, db_file, make_entry, nearest_entry, updating
from .device import host_fingerprint, usable_cores
from .space import (Problem, in_space, invalid_reason, params_of, schedule_from_params, space_for,
                    suggest)
from .worker import MeasureWorker, WorkerSetupError

CONVERGED_WITHIN = 1.02   # a trial within 2% of the final best counts as converged
FATAL = ("unsupported_target", "rejected")   # remote runner answers that no other candidate would change


def code_hash() -> str:
    """Hash of the kernels' DSL source and the lutc version: a new hash starts new studies."""
    from .. import __version__
    from ..kernels.gemm import build_tables, lut_gemm
    h = hashlib.sha256(f"{__version__}|{build_tables.source_hash()}|{lut_gemm.source_hash()}".encode())
    return h.hexdigest()[:10]


def default_storage_url() -> str:
    """Embedded default: a SQLite file under the user cache; no server needed."""
    from ..cache import cache_dir
    return f"sqlite:///{cache_dir() / 'tuning' / 'optuna.sqlite3'}"


def open_storage(url: str | None):
    """An Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or journal:PATH (file journal)."""
    import optuna
    url = url or default_storage_url()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend
        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
    if url.startswith(("postgresql://", "postgres://")):
        url = _postgres_driver(url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kw = {"connect_args": {"timeout": 120}}   # wait for the other writers' locks
    else:
        kw = {"pool_pre_ping": True}
    import sqlalchemy.exc
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kw)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
            # two workers creating the schema of a fresh database at once: one loses the race
            # (PostgreSQL: duplicate pg_type row; SQLite: table already exists); next time it exists
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def _postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 picks psycopg (3) for postgresql://; use psycopg2 when only it is installed."""
    import importlib.util
    rest = url.split("://", 1)[1]
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + rest
    return "postgresql://" + rest


def study_name(p: Problem, prefix: str | None = None, cache: str = "cold", stat: str = "median",
               device: str | None = None) -> str:
    """'<prefix>/<db key>/<cache mode>[-min]'; the default prefix names the device and the kernel code."""
    from .db import entry_key, m_bucket
    prefix = prefix or f"lutc-{device or host_fingerprint()['id']}-{code_hash()}"
    mode = cache if stat == "median" else f"{cache}-{stat}"
    return f"{prefix}/{entry_key(p.kernel, p.bits, p.group_size, m_bucket(p.M), p.N, p.K)}/{mode}"


def _finished(study) -> list:
    from optuna.trial import TrialState
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=states)
            if t.user_attrs.get("status") != "interrupted"]


def _complete(study) -> list:
    from optuna.trial import TrialState
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def open_study(p: Problem, storage, name: str, seed: int, trials: int):
    """Create or resume the study; the sampler seed depends on --seed, the study and its progress."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    n = len(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=zlib.crc32(f"{seed}|{name}|{n}".encode()), n_startup_trials=min(10, max(4, trials // 3)),
            multivariate=True, constant_liar=True)
    return study


def warm_start(study, p: Problem, space: dict, cores: int, db_path=None, device: str | None = None,
               trials: int | None = None):
    """Enqueue the default schedule and the db's entry for this (or the nearest) shape, while the
    study's finished plus queued trials stay below `trials` (a queued trial past the budget would
    never run: a rerun of a finished study would leave it WAITING)."""
    from ..ops import default_schedule
    from .lookup import load_dbs
    host = host_fingerprint()["id"]
    seeds = [("default", default_schedule(p.bits, p.group_size, p.M))]
    pool = [e for db in load_dbs() for e in db.entries.values()] if device in (None, host) else []
    if db_path is not None:
        path = db_file(db_path, device or host)
        if path.exists():
            pool = list(TuningDB.load(path).entries.values()) + pool  # a corrupt file stops us here
    e = nearest_entry(pool, p.kernel, p.bits, p.group_size, p.M, p.N, p.K)
    if e is not None:
        seeds.append(("db", Schedule.from_dict(e["schedule"])))
    for why, s in seeds:
        params = params_of(s, cores, p)
        if in_space(params, space) and (trials is None or _queued_or_finished(study) < trials):
            study.enqueue_trial(params, user_attrs={"warm_start": why}, skip_if_exists=True)


def _queued_or_finished(study) -> int:
    """Finished trials plus those waiting in the queue: what the study's budget already holds."""
    from optuna.trial import TrialState
    return len(_finished(study)) + len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


@dataclasses.dataclass
class TuneResult:
    problem: Problem
    study: str
    trials: int = 0
    ran: int = 0
    failed: int = 0
    best: Schedule | None = None
    time_s: float | None = None
    spread: float | None = None
    default_time_s: float | None = None
    default_spread: float | None = None
    contention: float | None = None      # cores other processes used during the final timing
    converged_trial: int | None = None
    converged_min: float | None = None
    minutes: float = 0.0
    note: str = ""

    @property
    def speedup(self):
        if self.time_s and self.default_time_s:
            return self.default_time_s / self.time_s
        return None


def _record(trial, res: dict):
    keys = ("status", "reason", "value_s", "stat", "median_s", "min_s", "max_s", "spread", "repeats", "coarse",
            "err_max", "err_ratio", "compile_s", "wall_s", "threads", "contention", "attempts", "weight_copies")
    for k in keys:
        if k in res and res[k] is not None:
            trial.set_user_attr(k, res[k])


def _duplicate(study, params: dict):
    for t in _complete(study):
        if t.params == params:
            return t
    return None


def run_trials(study, p: Problem, worker: MeasureWorker, space: dict, trials: int, timing: dict, bar=None) -> int:
    """Ask/tell until the study holds `trials` finished trials (from any worker); returns how
    many trials this process ran. Ctrl-C fails the trial in flight as 'interrupted' (not counted
    as finished) and queues its parameters again, so a rerun resumes where this one stopped and
    runs it exactly once more; a trial already told is kept and never queued again.

    interrupt_point() names the places a test can interrupt: start, ask (between ask and the
    worker tag), asked, suggested, measured (a measurement is back, not yet recorded), recorded,
    tell (told, SIGINT held) and told."""
    from optuna.trial import TrialState
    tag = f"{socket.gethostname()}:{os.getpid()}"
    fail_orphans(study)
    interrupt_point("start")
    ran = 0
    while len(_finished(study)) < trials:
        trial, told, res = None, False, None
        try:
            with _deferred_interrupt():    # a trial is never left asked but untagged
                trial = study.ask()
                interrupt_point("ask")
                trial.set_user_attr("worker", tag)
            ran += 1
            interrupt_point("asked")
            params = suggest(trial, space)
            interrupt_point("suggested")
            try:
                sched = schedule_from_params(p, params)
                why = invalid_reason(sched, p)
            except ValueError as e:            # a knob combination no Schedule allows (dot path, g=3)
                sched, why = None, str(e)
            dup = None if why else _duplicate(study, params)
            if why:
                _record(trial, {"status": "invalid", "reason": why})
                state, value = TrialState.PRUNED, None
            elif dup is not None:
                trial.set_user_attr("status", "duplicate")
                trial.set_user_attr("duplicate_of", dup.number)
                state, value = TrialState.COMPLETE, dup.value
            else:
                best = _best_value(study)
                res = worker.measure(sched, dict(timing, cutoff_s=3 * best if best else None))
                interrupt_point("measured")
                _record(trial, res)
                ok = res["status"] == "ok"
                state, value = (TrialState.COMPLETE, res["value_s"]) if ok else (TrialState.FAIL, None)
            interrupt_point("recorded")
            with _deferred_interrupt():    # never half told
                study.tell(trial, value, state=state)
                told = True
                interrupt_point("tell")
            interrupt_point("told")
            if res is not None and res["status"] in FATAL:   # the measuring device cannot run any candidate
                raise WorkerSetupError(f"{res['status']}: {res['reason']}")
        except KeyboardInterrupt:
            # the interrupt may also surface as the ask block ends (SIGINT held during ask):
            # that trial is asked and tagged, and is failed here too, never left RUNNING
            if trial is not None and not told:
                interrupt_trial(study, trial)
            raise
        if bar is not None:
            bar(len(_finished(study)), _best_value(study))
    return ran


def interrupt_trial(study, trial, why: str = "resumed"):
    """Fail a RUNNING trial as 'interrupted' (_finished does not count it) and queue it again
    (user attr warm_start=`why`) with what it had: the parameters it took from the queue (a warm
    start, an earlier resume) and those suggested so far. A fresh sampler trial interrupted
    before suggesting is simply drawn anew."""
    from optuna.trial import TrialState
    with _deferred_interrupt():
        trial.set_user_attr("status", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        params = _requeue_params(study, trial.number)
        if params:
            study.enqueue_trial(params, user_attrs={"warm_start": why})


def _requeue_params(study, number: int) -> dict:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return {**t.system_attrs.get("fixed_params", {}), **t.params}
    return {}


INTERRUPT_ENV = "LUTC_TUNE_INTERRUPT"
_interrupt_hits: dict = {}


def interrupt_point(name: str):
    """Fault injection for tests: $LUTC_TUNE_INTERRUPT='point:n' sends this process SIGINT, as
    Ctrl-C would, the n-th time (default 1st) it reaches `point`."""
    spec = os.environ.get(INTERRUPT_ENV)
    if not spec:
        return
    point, _, n = spec.partition(":")
    if point.strip() == name:
        _interrupt_hits[name] = _interrupt_hits.get(name, 0) + 1
        if _interrupt_hits[name] == int(n or 1):
            signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def _deferred_interrupt():
    """Hold Ctrl-C (SIGINT) until the block ends; in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda *_: got.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got:
            raise KeyboardInterrupt


def fail_orphans(study):
    """Treat RUNNING trials of tuner processes on this host that no longer exist (e.g. killed
    outright) as interrupted: failed as 'interrupted', not counted, and queued again, exactly as
    Ctrl-C does. Other hosts' running trials are left alone."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        h, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if h == host and pid.isdigit() and not _alive(int(pid)):
            try:
                interrupt_trial(study, optuna.trial.Trial(study, t._trial_id), "orphaned")
            except (UpdateFinishedTrialError, ValueError):
                pass   # another tuner starting on this host failed (and queued) it first


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        pass
    return True


def _best_value(study):
    return min((t.value for t in _complete(study)), default=None)


def convergence(study) -> tuple:
    """(trial number, minutes since the study's first trial) when the best came within 2% of final."""
    done = sorted(_complete(study), key=lambda t: t.number)
    if not done:
        return None, None
    final = min(t.value for t in done)
    first = min(t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start)
    for t in done:
        if t.value <= CONVERGED_WITHIN * final:
            return t.number, (t.datetime_complete - first).total_seconds() / 60
    return None, None


def compare(worker: MeasureWorker, schedules: list, rounds: int, timing: dict) -> list:
    """Interleaved timing of several schedules (round-robin, `rounds` times): per schedule the
    median over rounds of each round's statistic (value_s), the median spread and contention,
    and the worst error ratio."""
    import numpy as np
    runs = [[] for _ in schedules]
    for _ in range(rounds):
        for i, s in enumerate(schedules):
            r = worker.measure(s, timing)
            if r["status"] != "ok":
                raise RuntimeError(f"final measurement of {s.to_json()} failed: {r['status']}: {r['reason']}")
            runs[i].append(r)
    return [{"value_s": float(np.median([r["value_s"] for r in rs])),
             "spread": float(np.median([r["spread"] for r in rs])),
             "contention": float(np.median([r["contention"] for r in rs])),
             "err_ratio": max(r["err_ratio"] for r in rs)} for rs in runs]


def finalists(study, p: Problem, k: int, threads: tuple = ()) -> list:
    """The k fastest distinct schedules of the study, plus the fastest one at every thread count in
    `threads` (thread scaling is what background load distorts most), to be re-timed together."""
    out = []
    for t in sorted(_complete(study), key=lambda t: t.value):
        s = schedule_from_params(p, t.params)
        if s not in out:
            out.append(s)
        if len(out) == k:
            break
    for n in threads:
        s = out[0].replace(threads=n)
        if s not in out and invalid_reason(s, p) is None:
            out.append(s)
    return out


def timing_options(repeats: int, retries: int, stat: str) -> dict:
    t = {"repeats": repeats, "retries": retries}
    if stat == "min":   # the min of many short repeats estimates the uncontended time on a loaded machine
        t.update(stat="min", min_repeat_s=0.002)
    return t


def problem_dict(p: Problem, cache="cold", data_seed=0) -> dict:
    """What a measurement worker builds its data from."""
    return {"bits": p.bits, "group_size": p.group_size, "M": p.M, "N": p.N, "K": p.K, "seed": data_seed,
            "cache": cache}


def verify_entry(e: dict, rounds=5, repeats=7, retries=0, stat="median", cache="cold", timeout=300.0) -> tuple:
    """Re-time a db entry's schedule against the default, interleaved: (default, tuned) summaries."""
    from ..ops import default_schedule
    p = Problem(e["bits"], e["group_size"], e["m_bucket"], e["N"], e["K"], e["kernel"])
    sched = Schedule.from_dict(e["schedule"])
    with MeasureWorker(problem_dict(p, cache), timeout=timeout) as w:
        d, t = compare(w, [default_schedule(p.bits, p.group_size, p.M), sched], rounds,
                       timing_options(repeats, retries, stat))
    return d, t


def tune_problem(p: Problem, *, storage=None, trials=32, timeout=120.0, seed=0, prefix=None, db_path=None,
                 repeats=7, retries=2, stat="median", final_rounds=5, finalists_k=3, data_seed=0, cache="cold",
                 progress=None, make_worker=MeasureWorker, device: dict | None = None,
                 cores: int | None = None) -> TuneResult:
    """Tune one problem in its study (resuming it), re-time the `finalists_k` fastest schedules
    against the default (interleaved), and record the winner in the db at `db_path` (None: no write).

    Measurements run in `make_worker(problem_dict, timeout=...)`, a MeasureWorker unless another
    device measures (lutc.remote.RemoteMeasureWorker); `device` (its fingerprint) and `cores`
    then name the study and db file and bound the threads knob instead of this host's."""
    from ..ops import default_schedule
    from .lookup import clear_cache
    t0 = time.time()
    timing = timing_options(repeats, retries, stat)
    device = device or host_fingerprint()
    cores = cores or usable_cores()
    space = space_for(p, cores)
    name = study_name(p, prefix, cache, stat, device["id"])
    if storage is None or isinstance(storage, str):
        storage = open_storage(storage)
    study = open_study(p, storage, name, seed, trials)
    fail_orphans(study)    # first: their re-queued trials take their places in the budget before warm starts
    warm_start(study, p, space, cores, db_path, device["id"], trials)
    out = TuneResult(p, name)
    with make_worker(problem_dict(p, cache, data_seed), timeout=timeout) as worker:
        bar = progress(p, trials, len(_finished(study))) if progress else None
        try:
            out.ran = run_trials(study, p, worker, space, trials, timing, bar)
        finally:
            if bar is not None:
                bar.close()
        finished = _finished(study)
        out.trials = len(finished)
        out.failed = sum(1 for t in finished if t.state.name == "FAIL")
        if not _complete(study):
            out.note = "no valid configuration"
            out.minutes = (time.time() - t0) / 60
            return out
        default = default_schedule(p.bits, p.group_size, p.M)
        cands = finalists(study, p, finalists_k, space["threads"])
        d, *stats = compare(worker, [default] + cands, final_rounds, timing)
        i = min(range(len(cands)), key=lambda i: stats[i]["value_s"])
        best, b = cands[i], stats[i]
    if b["value_s"] >= d["value_s"]:
        out.note = f"default is fastest; best trial measured {b['value_s'] * 1e3:.4f} ms in the A/B"
        best, b = default, d
    out.best, out.time_s, out.spread = best, b["value_s"], b["spread"]
    out.default_time_s, out.default_spread = d["value_s"], d["spread"]
    out.contention = max(b["contention"], d["contention"])
    out.converged_trial, out.converged_min = convergence(study)
    out.minutes = (time.time() - t0) / 60
    if db_path is not None:
        entry = make_entry(best, p.M, p.N, p.K, out.time_s, out.default_time_s, "measured",
                           spread=out.spread, default_spread=out.default_spread, err_ratio=b["err_ratio"],
                           trials=out.trials, study=name, code_hash=code_hash(), cache=cache, stat=stat,
                           contention=b["contention"], converged_trial=out.converged_trial)
        with updating(db_file(db_path, device["id"]), device) as db:
            db.put(entry)
        clear_cache()
    return out


def progress_bar(p: Problem, total: int, initial: int):
    """A tqdm bar showing the best time so far (plain lines when tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None

    class Bar:
        def __init__(self):
            self.bar = tqdm(total=total, initial=min(initial, total), desc=p.label, file=sys.stderr,
                            mininterval=0.5, dynamic_ncols=True) if tqdm else None
            self.n = initial

        def __call__(self, n, best):
            text = f"best {best * 1e3:.4f} ms" if best else "best -"
            if self.bar is None:
                print(f"{p.label}: {n}/{total} trials, {text}", file=sys.stderr)
            else:
                self.bar.set_postfix_str(text, refresh=False)
                self.bar.update(min(n, total) - self.bar.n)
            self.n = n

        def close(self):
            if self.bar is not None:
                self.bar.close()
    return Bar()
