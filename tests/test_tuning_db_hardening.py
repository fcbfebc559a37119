"""Issue 13 finding 8: tuning db entry ranges, device ids, the lock beside the db, merge under the lock,
and a fuzz suite for the db's JSON (every outcome is TuningDBError or success)."""
import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lutc.schedule import Schedule
from lutc.tuning.db import (SCHEMA_VERSION, TuningDB, TuningDBError, db_file, key_of, make_entry, updating)

DEV = {"id": "x86_64-testcpu-2c", "cpu": "testcpu", "cores": 2}


def entry(M=1, N=256, K=512, **kw):
    return make_entry(Schedule(bits=2, group_size=128), M, N, K, 1e-4, 2e-4, **kw)


def _data(*entries):
    return {"schema": SCHEMA_VERSION, "device": dict(DEV), "entries": {key_of(e): e for e in entries}}


@pytest.mark.parametrize("field,value", [("N", 0), ("K", 0), ("N", -4), ("K", -1), ("m_bucket", 0),
                                         ("m_bucket", -8), ("m_bucket", 3), ("time_s", -1.0),
                                         ("time_s", float("nan")), ("default_time_s", float("inf")),
                                         ("time_s", 10 ** 400), ("bits", 0), ("group_size", 0)])
def test_entries_out_of_range_are_rejected(field, value):
    e = entry()
    e[field] = value
    with pytest.raises(TuningDBError, match=field):
        TuningDB.from_data(_data(e))
    with pytest.raises(ValueError, match=field):
        TuningDB(DEV).put(e)


def test_a_db_with_a_zero_dimension_does_not_break_lookups(tmp_path, monkeypatch):
    from lutc.tuning import lookup
    from lutc.tuning.device import host_fingerprint
    dev = host_fingerprint()
    bad = entry(N=256)
    bad["N"] = 0
    path = tmp_path / f"{dev['id']}.json"
    path.write_text(json.dumps({"schema": SCHEMA_VERSION, "device": dev, "entries": {key_of(bad): bad}}))
    monkeypatch.setenv(lookup.ENV_VAR, str(tmp_path))
    lookup.clear_cache()
    try:
        with pytest.warns(RuntimeWarning, match="ignoring tuning db"):
            assert lookup.lookup_entry("lut_gemm", 2, 128, 1, 256, 512) is None
    finally:
        lookup.clear_cache()


@pytest.mark.parametrize("dev", ["../evil", "..", ".hidden", "a/b", "/abs", "", "x" * 200, "a\x00b", "-rf", 7, None])
def test_device_ids_that_could_name_other_files_are_refused(tmp_path, dev):
    with pytest.raises(TuningDBError, match="invalid device id"):
        db_file(tmp_path, dev)
    with pytest.raises(TuningDBError, match="invalid device id"):
        TuningDB.from_data({"schema": SCHEMA_VERSION, "device": {"id": dev}, "entries": {}}) if isinstance(dev, str) \
            else db_file(tmp_path, dev)
    with pytest.raises(TuningDBError, match="invalid device id"):
        with updating(tmp_path / "x.json", {"id": dev}):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_runner_reporting_a_traversing_device_id_writes_nothing(tmp_path, monkeypatch, capsys):
    """lutc tune --runner: the runner's fingerprint names the db file; '../x' must be refused up front."""
    from lutc.cli import main
    from lutc.tuning import cli as tcli
    fp = dict(DEV, id="../../escaped", isa="avx2")
    monkeypatch.setattr(tcli, "_measurement", lambda args: {"make_worker": None, "device": fp, "cores": 2})
    db = tmp_path / "db" / "sub"
    code = main(["tune", "--shapes", "64x256", "--bits", "2", "--m", "1", "--trials", "1", "--runner", "127.0.0.1:1",
                 "--db", str(db), "--quiet"])
    assert code == 2
    assert "invalid device id" in capsys.readouterr().err
    assert not (tmp_path / "escaped.json").exists() and not (tmp_path / "db").exists()


def _holds_lock_elsewhere(path, env_cache, monkeypatch, body):
    """Hold the db lock of `path` here, then run body() in a thread with LUTC_CACHE_DIR and HOME set
    to another place: `path` must not change until the lock is released."""
    from lutc.cli import main
    from lutc.tuning import db as dbmod
    file_lock = getattr(dbmod, "file_lock", None) or dbmod._file_lock   # (_file_lock: the name before issue 13)
    main(["db", "show", "--device", "warm-up-1c", "--db", str(env_cache)])   # imports done before timing
    done = threading.Event()

    def other():
        body()
        done.set()
    with file_lock(path):
        monkeypatch.setenv("LUTC_CACHE_DIR", str(env_cache))
        monkeypatch.setenv("HOME", str(env_cache))
        th = threading.Thread(target=other, daemon=True)
        th.start()
        assert not done.wait(1.0), "the other writer did not wait for the lock"
        assert not path.exists(), "the other writer wrote the db while the lock was held"
    th.join(20)
    assert done.is_set()


def test_writers_with_different_cache_dirs_exclude_each_other(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTC_CACHE_DIR", str(tmp_path / "cache_a"))
    path = tmp_path / "shared" / f"{DEV['id']}.json"

    def write():
        with updating(path, DEV) as db:
            db.put(entry())
    _holds_lock_elsewhere(path, tmp_path / "cache_b", monkeypatch, write)
    assert len(TuningDB.load(path).entries) == 1


def test_db_merge_takes_the_lock(tmp_path, monkeypatch):
    from lutc.cli import main
    a = TuningDB(DEV)
    a.put(entry())
    a.save(tmp_path / "a.json")
    out = tmp_path / "out.json"
    codes = []
    _holds_lock_elsewhere(out, tmp_path / "cache_b", monkeypatch,
                          lambda: codes.append(main(["db", "merge", str(tmp_path / "a.json"), "-o", str(out)])))
    assert codes == [0] and len(TuningDB.load(out).entries) == 1


def test_db_show_refuses_a_traversing_device(tmp_path, capsys):
    from lutc.cli import main
    assert main(["db", "show", "--device", "../../etc/x", "--db", str(tmp_path)]) == 2
    assert "invalid device id" in capsys.readouterr().err


def test_deeply_nested_db_is_a_db_error(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TuningDBError, match="invalid JSON"):
        TuningDB.load(p)


# ----- fuzz ----------------------------------------------------------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=10),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_FIELDS = ["kernel", "bits", "group_size", "m_bucket", "N", "K", "schedule", "time_s", "default_time_s",
           "lutc_version", "date", "source"]


def _use(db):
    """What lookups and merges do with a loaded db: none of it may raise on a validated db."""
    for M, N, K in ((1, 256, 512), (128, 4096, 4096), (3, 1, 1)):
        db.get("lut_gemm", 2, 128, M, N, K)
        db.nearest("lut_gemm", 2, 128, M, N, K)
    db.merge(db)
    json.dumps(db.to_data())


@given(data=st.data())
def test_fuzz_mutated_db_entries(data):
    e = entry(M=data.draw(st.sampled_from([1, 2, 64, 128])), N=data.draw(st.integers(1, 9000)),
              K=data.draw(st.integers(1, 9000)))
    raw = _data(e)
    key = next(iter(raw["entries"]))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(["entry", "schedule", "top", "device"]))
        ent = raw["entries"].get(key) if isinstance(raw.get("entries"), dict) else None
        if not isinstance(ent, dict) and where in ("entry", "schedule"):
            continue
        if where == "entry":
            ent[data.draw(st.sampled_from(_FIELDS))] = data.draw(_json)
        elif where == "schedule" and isinstance(ent.get("schedule"), dict):
            sch = ent["schedule"]
            sch[data.draw(st.sampled_from(sorted(sch) + ["extra"]))] = data.draw(_json)
        elif where == "top":
            raw[data.draw(st.sampled_from(["schema", "device", "entries"]))] = data.draw(_json)
        elif isinstance(raw.get("device"), dict):
            raw["device"]["id"] = data.draw(_json | st.sampled_from(["../x", "a/b", ".", "ok-id"]))
    blob = json.dumps(raw).encode()
    try:
        db = TuningDB.from_bytes(blob)
    except TuningDBError:
        return
    _use(db)


@given(raw=st.one_of(st.binary(max_size=300), _json.map(lambda v: json.dumps(v).encode())))
def test_fuzz_db_bytes(raw):
    try:
        db = TuningDB.from_bytes(raw)
    except TuningDBError:
        return
    _use(db)
