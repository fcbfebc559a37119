"""Schedule lookup for lutc.ops: this device's entry, the nearest shape, then the default; cached per process."""
import sys

import numpy as np
import pytest

import lutc.ops as ops
from lutc.schedule import Schedule
import lutc.tuning.lookup as lookup
from lutc.tuning import clear_cache, lookup_schedule
from lutc.tuning.db import TuningDB, db_file, make_entry
from lutc.tuning.device import host_fingerprint


@pytest.fixture
def tuning_db(tmp_path, monkeypatch):
    """An empty db dir for this host as the only lookup location; returns a writer."""
    monkeypatch.setenv("LUTC_TUNING_DB", str(tmp_path))
    clear_cache()
    dev = host_fingerprint()

    def write(*entries):
        db = TuningDB(dev)
        for e in entries:
            db.put(e)
        db.save(db_file(tmp_path, dev["id"]))
        clear_cache()
        return db
    yield write
    clear_cache()


def entry(M=1, N=256, K=512, bits=2, gs=128, **knobs):
    return make_entry(Schedule(bits=bits, group_size=gs, **knobs), M, N, K, 1e-4, 2e-4)


def test_no_db_means_default(tuning_db):
    assert lookup_schedule("lut_gemm", 2, 128, 1, 256, 512) is None
    assert ops.choose_schedule(2, 128, 1, 256, 512) == ops.default_schedule(2, 128, 1)


def test_exact_then_nearest_then_default(tuning_db):
    tuning_db(entry(M=1, N=4096, K=4096, bn=64, threads=1),
              entry(M=128, N=4096, K=4096, bn=128, mb=4))
    assert ops.choose_schedule(2, 128, 1, 4096, 4096).bn == 64
    assert ops.choose_schedule(2, 128, 1, 4096, 4096).threads == 1
    assert ops.choose_schedule(2, 128, 100, 4096, 4096).mb == 4          # M bucket 128
    assert ops.choose_schedule(2, 128, 1, 11008, 4096).bn == 64          # nearest shape, same M regime
    assert ops.choose_schedule(2, 128, 512, 4096, 11008).bn == 128
    assert ops.choose_schedule(3, 128, 1, 4096, 4096) == ops.default_schedule(3, 128, 1)
    assert ops.choose_schedule(2, 64, 1, 4096, 4096) == ops.default_schedule(2, 64, 1)


def test_non_host_targets_get_no_measurements(tuning_db):
    tuning_db(entry())
    assert lookup_schedule("lut_gemm", 2, 128, 1, 256, 512, "host") is not None
    assert lookup_schedule("lut_gemm", 2, 128, 1, 256, 512, "aarch64-linux") is None


def test_parsed_once_per_process_until_cleared(tuning_db, tmp_path):
    tuning_db(entry(bn=64))
    assert lookup_schedule("lut_gemm", 2, 128, 1, 256, 512).bn == 64
    db = TuningDB.load(db_file(tmp_path, host_fingerprint()["id"]))
    db.put(entry(bn=16))
    db.save()
    assert lookup_schedule("lut_gemm", 2, 128, 1, 256, 512).bn == 64   # cached
    clear_cache()
    first = lookup_schedule("lut_gemm", 2, 128, 1, 256, 512)
    assert first.bn == 16


def _calls(fn) -> int:
    """How many functions (Python and builtin) one call of fn() makes: work, counted, not timed."""
    n = 0

    def count(frame, event, arg):
        nonlocal n
        n += event in ("call", "c_call")
    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n


def test_a_cached_lookup_is_a_dict_hit(tuning_db, monkeypatch):
    """Cheap enough for every lut_gemm call: once cached, a lookup reads no file, computes no
    device id, searches no entries and builds no Schedule; it is a handful of calls."""
    tuning_db(entry(bn=64))
    first = lookup_schedule("lut_gemm", 2, 128, 1, 256, 512)
    none = lookup_schedule("lut_gemm", 3, 128, 1, 256, 512)            # a cached miss, too
    assert first.bn == 64 and none is None

    def forbidden(*a, **k):
        raise AssertionError("a cached lookup did work")
    for name in ("lookup_entry", "load_dbs", "_load", "host_device_id", "nearest_entry", "db_file"):
        monkeypatch.setattr(lookup, name, forbidden)
    monkeypatch.setattr(TuningDB, "load", forbidden)
    monkeypatch.setattr(Schedule, "from_dict", forbidden)
    for _ in range(2000):
        assert lookup_schedule("lut_gemm", 2, 128, 1, 256, 512) is first
        assert lookup_schedule("lut_gemm", 3, 128, 1, 256, 512) is None
    calls = _calls(lambda: lookup_schedule("lut_gemm", 2, 128, 1, 256, 512))
    assert calls <= 20, calls                                          # now 8: environ.get, m_bucket, ...


def test_other_devices_file_is_ignored(tuning_db, tmp_path, monkeypatch):
    other = TuningDB(dict(host_fingerprint(), id="aarch64-other-8c"))
    other.put(entry(bn=16))
    other.save(tmp_path / "pinned.json")
    monkeypatch.setenv("LUTC_TUNING_DB", str(tmp_path / "pinned.json"))
    assert lookup_schedule("lut_gemm", 2, 128, 1, 256, 512) is None


def test_corrupt_db_warns_and_falls_back(tuning_db, tmp_path):
    path = db_file(tmp_path, host_fingerprint()["id"])
    path.write_text("{broken")
    with pytest.warns(RuntimeWarning, match="corrupt tuning db"):
        assert ops.choose_schedule(2, 128, 1, 256, 512) == ops.default_schedule(2, 128, 1)
    assert path.read_text() == "{broken"


def test_empty_env_disables_lookup(tuning_db, monkeypatch):
    tuning_db(entry(bn=16))
    monkeypatch.setenv("LUTC_TUNING_DB", "")
    assert lookup_schedule("lut_gemm", 2, 128, 1, 256, 512) is None


def test_lut_gemm_runs_the_tuned_schedule(tuning_db, monkeypatch):
    import quant
    tuning_db(entry(M=1, N=64, K=256, lut_dtype="float32", bn=16, unroll=2))
    used = []
    real = ops.get_kernel
    monkeypatch.setattr(ops, "get_kernel", lambda s, target="host": used.append(s) or real(s, target))
    rng = np.random.default_rng(0)
    qt = quant.quantize(rng.standard_normal((64, 256)).astype(np.float32), 2, 128, method="rtn")
    x = rng.standard_normal((1, 256)).astype(np.float32)
    y = ops.linear(x, qt)
    assert used[-1].lut_dtype == "float32" and used[-1].bn == 16
    np.testing.assert_allclose(y, x @ qt.dequantize().T, rtol=1e-4, atol=1e-4)
