"""Scale-out: two worker processes tune one study concurrently on SQLite and on a real PostgreSQL server."""
import glob
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import optuna
import pytest

from lutc.tuning.db import TuningDB, db_file
from lutc.tuning.device import host_device_id
from lutc.tuning.search import open_storage

TRIALS = 8
NAME = "conc/lut_gemm/w2/g128/m1/64x256/hot"


def _run_two_workers(url, tmp_path):
    env = dict(os.environ, LUTC_TUNING_DB=str(tmp_path / "none"))
    procs = []
    for seed in (1, 2):
        cmd = [sys.executable, "-m", "lutc.cli", "tune", "--shapes", "64x256", "--bits", "2", "--m", "1",
               "--trials", str(TRIALS), "--storage", url, "--study", "conc", "--seed", str(seed), "--cache", "hot",
               "--retries", "0", "--repeats", "3", "--final-rounds", "1", "--db", str(tmp_path / "db"), "--quiet"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    ran = [int(re.search(r"\((\d+) here", err).group(1)) for _, err in outs]
    trials = optuna.load_study(study_name=NAME, storage=open_storage(url)).get_trials(deepcopy=False)
    # nothing lost, nothing duplicated: every trial a worker ran is stored once, numbered densely
    assert sum(ran) == len(trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t._trial_id for t in trials}) == len(trials)
    assert all(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
    assert TRIALS <= len(trials) <= TRIALS + 1     # a worker may ask once more while the other finishes
    assert len({t.user_attrs["worker"] for t in trials}) == 2 and min(ran) >= 1
    db = TuningDB.load(db_file(tmp_path / "db", host_device_id()))
    assert db.get("lut_gemm", 2, 128, 1, 64, 256)["source"] == "measured"


def test_schema_creation_race_is_retried(tmp_path, monkeypatch):
    import sqlalchemy.exc
    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kw):
        calls.append(url)
        if len(calls) == 1:  # what the loser of two workers creating a fresh schema sees
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table already exists"))
        return real(url, **kw)
    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'x.db'}"), real) and len(calls) == 2


def test_journal_storage(tmp_path):
    s = open_storage(f"journal:{tmp_path / 'j.log'}")
    optuna.create_study(study_name="j", storage=s).optimize(lambda t: t.suggest_int("x", 0, 3), n_trials=2)
    assert len(optuna.load_study(study_name="j", storage=open_storage(f"journal:{tmp_path / 'j.log'}")).trials) == 2


def test_two_workers_share_a_sqlite_study(tmp_path):
    _run_two_workers(f"sqlite:///{tmp_path / 'study.db'}", tmp_path)


def _server_bindir():
    cands = [os.path.dirname(shutil.which("pg_ctl") or "")] + sorted(glob.glob("/usr/lib/postgresql/*/bin"))[::-1]
    spec = importlib.util.find_spec("pgserver")       # PyPI's binaries, what .ci/run installs without root
    if spec is not None and spec.submodule_search_locations:
        cands.append(os.path.join(spec.submodule_search_locations[0], "pginstall", "bin"))
    for d in cands:
        if d and all(os.path.exists(os.path.join(d, b)) for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason):
    """Skip on a developer's machine; under CI (which installs PostgreSQL) a missing server fails."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL test: {reason}")
    pytest.skip(reason)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on loopback (initdb + pg_ctl on a free port), torn down after."""
    bindir = _server_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: apt-get install postgresql "
                     "or pip install pgserver")
    if importlib.util.find_spec("psycopg2") is None:
        _unavailable("the PostgreSQL driver is missing: pip install psycopg2-binary")
    base = tempfile.mkdtemp(prefix="lutc-pg-")
    prefix = []
    if os.geteuid() == 0:                          # initdb and postgres refuse to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            _unavailable("running as root and there is no 'postgres' user to run the server as")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(base, "data"), _free_port()

    def run(*args):
        subprocess.run(prefix + [os.path.join(bindir, args[0]), *args[1:]], check=True, capture_output=True,
                       timeout=60, cwd=base)
    try:
        run("initdb", "-D", data, "-A", "trust", "-U", "lutc", "-E", "UTF8", "--no-sync")
        run("pg_ctl", "-D", data, "-w", "-t", "30", "-l", os.path.join(base, "log"), "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        yield f"postgresql://lutc@127.0.0.1:{port}/postgres"
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(postgres_url, tmp_path):
    _run_two_workers(postgres_url, tmp_path)
