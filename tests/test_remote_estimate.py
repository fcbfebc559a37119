"""The static cost model behind --estimate: sane, monotone where it must be, and never recorded as measured."""
import json
import math

import pytest

from lutc.remote.estimate import device_fingerprint, estimate, estimated_entry, rank
from lutc.schedule import Schedule
from lutc.tuning.db import TuningDB, make_entry
from lutc.tuning.space import Problem, invalid_reason

DECODE, PREFILL = (1, 4096, 4096), (128, 4096, 4096)


@pytest.mark.parametrize("target", ["m2", "aarch64-linux", "x86-avx2", "x86-avx512", "generic-x86", "host"])
def test_estimates_are_positive_and_marked(target):
    e = estimate(Schedule(bits=2, group_size=128), DECODE, target)
    assert math.isfinite(e["time_s"]) and e["time_s"] > 0
    assert e["source"] == "estimated" and e["model"].startswith("lutc.remote.estimate/")


def test_monotone_in_the_obvious_directions():
    base = Schedule(bits=2, group_size=128, threads=1)
    t = lambda s, shape=PREFILL, target="m2": estimate(s, shape, target)["time_s"]  # noqa: E731
    assert t(base.replace(bits=4)) > t(base)                      # more bit-planes, more lookups
    assert t(base.replace(lut_dtype="float32")) > t(base.replace(lut_dtype="float16")) > t(base)
    assert t(base, target="generic-x86") > t(base, target="x86-avx2")   # select chain vs vpshufb
    assert t(base.replace(threads=4)) < t(base)                   # compute-bound prefill scales
    assert estimate(base.replace(threads=None), DECODE, "m2")["bound"] == "memory"  # 8 cores stream weights
    assert estimate(base, PREFILL, "m2")["bound"] == "compute"


def test_rank_covers_the_tuner_space_and_is_sorted():
    p = Problem(3, 64, 1, 1024, 2048)
    ranked = rank(p, "m2")
    assert len(ranked) > 500
    times = [t for t, _ in ranked]
    assert all(a <= b * 1.0101 for a, b in zip(times, times[1:]))   # sorted up to the 1% tie rule
    assert all(invalid_reason(s, p) is None and s.bits == 3 for _, s in ranked)


def test_estimated_entries_never_pass_as_measured(tmp_path):
    p = Problem(2, 128, 1, 4096, 4096)
    e = estimated_entry(p, "m2")
    assert e["source"] == "estimated" and e["model"] and e["target"] == "m2"
    fp = device_fingerprint("m2")
    assert fp["id"] == "arm64-apple-m2-8c" and fp["isa"] == "neon"
    db = TuningDB(fp)
    db.put(e)
    measured = make_entry(Schedule.from_dict(e["schedule"]), 1, 4096, 4096, e["time_s"] * 3, None, "measured")
    other = TuningDB(fp)
    other.put(measured)
    assert db.merge(other).get("lut_gemm", 2, 128, 1, 4096, 4096)["source"] == "measured"


def test_cli_estimate_records_estimated_entries(tmp_path, capsys):
    from lutc.cli import main
    assert main(["estimate", "--target", "m2", "--bits", "2", "--shape", "1x512x1024", "--top", "2",
                 "--db", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not measurements" in out and out.count("(estimated)") == 2
    data = json.loads((tmp_path / "arm64-apple-m2-8c.json").read_text())
    assert [e["source"] for e in data["entries"].values()] == ["estimated"]
