"""Tuning db: keys, schema validation, atomic locked writes, corrupt files, merge, and the db CLI."""
import dataclasses
import json

import pytest

from lutc.schedule import Schedule
from lutc.tuning.db import (SCHEMA_VERSION, TuningDB, TuningDBError, db_file, entry_key, m_bucket, make_entry,
                            updating)
from lutc.tuning.device import host_fingerprint

DEV = {"id": "x86_64-testcpu-2c", "cpu": "testcpu", "cores": 2}


def entry(bits=2, gs=128, M=1, N=256, K=512, t=1e-4, default=2e-4, source="measured", **knobs):
    return make_entry(Schedule(bits=bits, group_size=gs, **knobs), M, N, K, t, default, source)


def test_m_bucket_is_next_power_of_two():
    assert [m_bucket(m) for m in (0, 1, 2, 3, 4, 5, 100, 128, 129)] == [1, 1, 2, 4, 4, 8, 128, 128, 256]


def test_key_contains_group_size_and_every_knob_that_changes_code_is_stored():
    # T-MAC issue #66: a cache key without group_size served kernels for the wrong groups
    assert entry_key("lut_gemm", 2, 64, 1, 4096, 4096) != entry_key("lut_gemm", 2, 128, 1, 4096, 4096)
    s = Schedule(bits=3, group_size=64, g=3, lut_dtype="float16", bn=64, unroll=2, mb=2, interleave="plane",
                 threads=1)
    code_knobs = {name for name, _ in s.codegen_key}
    assert code_knobs == {f.name for f in dataclasses.fields(Schedule)} - {"threads"}
    e = make_entry(s, 128, 4096, 4096, 1e-3, 2e-3)
    back = Schedule.from_dict(json.loads(json.dumps(e))["schedule"])
    assert back == s and back.codegen_key == s.codegen_key


def test_entry_records_what_the_issue_asks_for():
    e = entry()
    for f in ("schedule", "time_s", "default_time_s", "lutc_version", "date", "source", "m_bucket", "group_size"):
        assert f in e
    assert e["source"] == "measured"
    with pytest.raises(ValueError, match="source"):
        entry(source="guessed")


def test_roundtrip_and_versioned_schema(tmp_path):
    db = TuningDB(DEV)
    db.put(entry())
    db.put(entry(M=128, N=4096, K=4096, lut_dtype="float16"))
    path = tmp_path / "d.json"
    db.save(path)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA_VERSION and data["device"]["id"] == DEV["id"]
    back = TuningDB.load(path)
    assert back.entries == db.entries
    assert back.get("lut_gemm", 2, 128, 100, 4096, 4096)["schedule"]["lut_dtype"] == "float16"
    data["schema"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(TuningDBError, match="newer lutc"):
        TuningDB.load(path)


@pytest.mark.parametrize("text, why", [
    ('{"schema": 1, "device": {"id": "x"}, "entries": {', "invalid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"schema": 1, "entries": {}}', "device"),
    ('{"schema": 1, "device": {"id": "x"}, "entries": {"k": {"kernel": "lut_gemm"}}}', "lacks field"),
])
def test_corrupt_file_gives_a_clear_error(tmp_path, text, why):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TuningDBError, match=why) as err:
        TuningDB.load(path)
    assert str(path) in str(err.value)


def test_entry_with_wrong_key_or_bad_schedule_is_rejected(tmp_path):
    e = entry()
    for key, bad in ((entry_key("lut_gemm", 2, 64, 1, 256, 512), e),
                     (entry_key("lut_gemm", 2, 128, 1, 256, 512), dict(e, schedule=dict(e["schedule"], bn=48)))):
        path = tmp_path / "x.json"
        path.write_text(json.dumps({"schema": SCHEMA_VERSION, "device": DEV, "entries": {key: bad}}))
        with pytest.raises(TuningDBError):
            TuningDB.load(path)


def test_updating_never_overwrites_a_corrupt_or_foreign_file(tmp_path):
    path = tmp_path / "x86_64-testcpu-2c.json"
    path.write_text("{not json")
    with pytest.raises(TuningDBError, match="corrupt"):
        with updating(path, DEV) as db:
            db.put(entry())
    assert path.read_text() == "{not json"
    other = TuningDB(dict(DEV, id="aarch64-other-8c"))
    other.save(path)
    before = path.read_text()
    with pytest.raises(TuningDBError, match="holds device"):
        with updating(path, DEV):
            pass
    assert path.read_text() == before


def test_updating_writes_atomically_and_keeps_other_entries(tmp_path):
    path = db_file(tmp_path, DEV["id"])
    with updating(path, DEV) as db:
        db.put(entry(N=256))
    with updating(path, DEV) as db:
        db.put(entry(N=512))
    assert len(TuningDB.load(path).entries) == 2
    # no temp files left behind; the lock file stays beside the db (see lock_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, f".{path.name}.lock"])


def test_merge_prefers_measured_then_faster_and_refuses_other_devices():
    a, b = TuningDB(DEV), TuningDB(DEV)
    a.put(entry(N=256, t=3e-4))
    b.put(entry(N=256, t=2e-4, bn=64))
    a.put(entry(N=512, t=1e-4, source="measured"))
    b.put(entry(N=512, t=1e-5, source="estimated"))
    b.put(entry(N=1024))
    m = a.merge(b)
    assert len(m.entries) == 3
    assert m.get("lut_gemm", 2, 128, 1, 256, 512)["schedule"]["bn"] == 64
    assert m.get("lut_gemm", 2, 128, 1, 512, 512)["source"] == "measured"
    with pytest.raises(TuningDBError, match="different devices"):
        a.merge(TuningDB(dict(DEV, id="other")))


def test_nearest_prefers_same_m_regime_and_never_crosses_bits_or_group():
    db = TuningDB(DEV)
    db.put(entry(M=1, N=4096, K=4096, bn=64))
    db.put(entry(M=128, N=576, K=576, bn=16))
    db.put(entry(bits=3, M=1, N=576, K=576, bn=128))
    assert db.nearest("lut_gemm", 2, 128, 1, 576, 576)["schedule"]["bn"] == 64
    assert db.nearest("lut_gemm", 2, 128, 64, 4096, 4096)["schedule"]["bn"] == 16
    assert db.nearest("lut_gemm", 4, 128, 1, 576, 576) is None
    assert db.nearest("lut_gemm", 2, 64, 1, 576, 576) is None


def test_cli_db_show_and_merge(tmp_path, capsys):
    from lutc.cli import main
    dev = host_fingerprint()
    a, b = TuningDB(dev), TuningDB(dev)
    a.put(entry(N=256))
    b.put(entry(N=512, lut_dtype="float32"))
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    out = tmp_path / "out" / f"{dev['id']}.json"
    assert main(["db", "merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(out)]) == 0
    assert len(TuningDB.load(out).entries) == 2
    assert main(["db", "show", "--db", str(out.parent)]) == 0
    text = capsys.readouterr().out
    assert "lut_gemm/w2/g128/m1/256x512" in text and "float32" in text and dev["id"] in text
    (tmp_path / "junk.json").write_text("{")
    assert main(["db", "merge", str(tmp_path / "a.json"), str(tmp_path / "junk.json"), "-o", str(out)]) == 1
    assert "junk.json" in capsys.readouterr().err
    assert main(["db", "show", "--device", "nosuch-device-1c", "--db", str(tmp_path)]) == 1


def test_cli_db_verify_retimes_entries_against_the_default(tmp_path, capsys):
    from lutc.cli import main
    db = TuningDB(host_fingerprint())
    db.put(entry(N=64, K=256, bn=16, threads=1))
    db.put(entry(N=128, K=256, bn=16, threads=1))
    db.save(tmp_path / "d.json")
    assert main(["db", "verify", "--db", str(tmp_path / "d.json"), "--match", "64x256", "--rounds", "1",
                 "--repeats", "2", "--cache", "hot"]) == 0
    out = capsys.readouterr().out
    assert "lut_gemm/w2/g128/m1/64x256" in out and "128x256" not in out and "x " in out
