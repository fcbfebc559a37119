"""Search space constraints, the accuracy gate, worker isolation (crash, hang, compile error) and timing."""
import numpy as np
import pytest
from _liveness import LIVENESS_S, load_note

import lutc
import quant
from lutc.schedule import KNOB_CHOICES, Schedule
from lutc.tuning.accuracy import ErrorBound
from lutc.tuning.space import PARAMS, Problem, invalid_reason, params_of, space_for, thread_choices
from lutc.tuning.timing import time_guarded, weight_copies
from lutc.tuning.worker import MeasureWorker

TINY = {"bits": 2, "group_size": 128, "M": 2, "N": 64, "K": 256, "seed": 0, "cache": "hot"}


def test_space_covers_every_knob_and_cuts_useless_values():
    assert set(PARAMS) == set(Schedule(bits=2, group_size=128).knobs())
    sp = space_for(Problem(2, 128, 1, 48, 256), cores=8)
    assert sp["mb"] == (1,)                          # no second activation row to block
    assert sp["bn"] == (16, 32)                      # taller tiles would be padding only
    assert sp["threads"] == (1, 2, 4, 8) and thread_choices(6) == (1, 2, 4, 6)
    big = space_for(Problem(3, 128, 128, 4096, 4096), cores=2)
    for k in ("g", "lut_dtype", "bn", "unroll", "mb", "interleave"):
        assert big[k] == tuple(KNOB_CHOICES[k])


def test_combinations_that_cannot_help_are_pruned_before_compiling():
    p = Problem(2, 32, 1, 64, 256)
    assert "unroll=8 exceeds the 4 table chunks" in invalid_reason(
        Schedule(bits=2, group_size=32, unroll=8, lut_scale_block=32), p)
    assert "unroll=4 exceeds the 2 table chunks" in invalid_reason(Schedule(bits=2, group_size=32, unroll=4), p)
    assert invalid_reason(Schedule(bits=2, group_size=32, unroll=4, lut_scale_block=32), p) is None
    assert invalid_reason(lutc.ops.default_schedule(2, 32), p) is None          # the default is never pruned
    assert "threads=4 exceeds the 1 tiles" in invalid_reason(Schedule(bits=2, group_size=32, bn=64, threads=4, unroll=2), p)
    assert params_of(Schedule(bits=2, group_size=32), cores=2)["threads"] == 2


@pytest.mark.parametrize("bits, gs, K", [(2, 128, 300), (3, 64, 256), (4, 32, 96)])
def test_accuracy_gate_accepts_every_precision_and_rejects_a_wrong_result(bits, gs, K):
    rng = np.random.default_rng(bits)
    qt = quant.quantize(rng.standard_normal((40, K)).astype(np.float32), bits, gs, method="rtn")
    x = rng.standard_normal((3, K)).astype(np.float32)
    eb = ErrorBound(qt, x)
    bounds = {}
    for g in (2, 3, 4):
        for dt in ("int8", "float16", "float32"):
            s = Schedule(bits=bits, group_size=gs, g=g, lut_dtype=dt)
            y = lutc.compile(s)(x, qt, threads=1)
            r = eb.check(y, s)
            assert r["ok"], (g, dt, r)
            bounds[dt] = eb.bound(s).mean()
    assert bounds["int8"] > bounds["float16"] > bounds["float32"] > 0
    s = Schedule(bits=bits, group_size=gs, lut_dtype="float32")
    y = lutc.compile(s)(x, qt, threads=1)
    y[1, 7] += 50 * eb.bound(s)[1, 7]
    bad = eb.check(y, s)
    assert not bad["ok"] and "(1, 7)" in bad["reason"] and "float32 bound" in bad["reason"]
    y[0, 0] = np.nan
    assert "non-finite" in eb.check(y, s)["reason"]


def test_timing_reports_median_spread_and_contention():
    r = time_guarded(lambda: sum(range(200)), repeats=5, retries=0, min_repeat_s=0.002, warmup_s=0.001)
    assert r["repeats"] == 5 and r["min_s"] <= r["median_s"] <= r["max_s"]
    assert r["spread"] >= 0 and r["contention"] >= 0 and r["attempts"] == 1


def test_cold_cache_copies_cover_the_flush_size():
    rng = np.random.default_rng(0)
    qt = quant.quantize(rng.standard_normal((64, 256)).astype(np.float32), 2, 128, method="rtn")
    packed = lutc.compile(Schedule(bits=2, group_size=128)).pack(qt)
    copies = weight_copies(packed, 10 * packed.nbytes)
    assert len(copies) == 10 and copies[0] is packed
    assert all(np.array_equal(c.w, packed.w) and c.w.ctypes.data != packed.w.ctypes.data for c in copies[1:])
    assert len(weight_copies(packed, 0)) == 1


def test_worker_measures_and_survives_crash_hang_and_compile_error(monkeypatch):
    monkeypatch.setenv("LUTC_TUNE_FAULTS", "bn=64:crash,bn=128:hang,unroll=8:compile_error")
    base = Schedule(bits=2, group_size=128, bn=16, threads=1)
    timing = {"repeats": 3, "retries": 0, "min_repeat_s": 0.002}
    # compiling and timing get the liveness bound; only the hanging candidate a short timeout
    # (nothing else runs under it, so a loaded machine cannot turn real work into a 'timeout')
    with MeasureWorker(TINY, timeout=LIVENESS_S) as w:
        ok = w.measure(base, timing)
        assert ok["status"] == "ok" and ok["median_s"] > 0 and ok["err_ratio"] < 1, (ok, load_note())
        crash = w.measure(base.replace(bn=64), timing)
        assert crash["status"] == "crashed" and "SIGSEGV" in crash["reason"]
        w.timeout = 2
        hang = w.measure(base.replace(bn=128), timing)
        w.timeout = LIVENESS_S
        assert hang["status"] == "timeout" and "2s timeout" in hang["reason"]
        err = w.measure(base.replace(unroll=8), timing)
        assert err["status"] == "compile_error" and "injected" in err["reason"]
        again = w.measure(base.replace(lut_dtype="float16"), timing)
        assert again["status"] == "ok", again
