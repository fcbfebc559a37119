"""The tuner's accuracy gate: a candidate that computes wrong results fails its trial as inaccurate,
however fast it would time, and is never chosen or written to the tuning db."""
import optuna

from lutc.tuning.db import TuningDB, db_file
from lutc.tuning.device import host_device_id
from lutc.tuning.search import open_storage, study_name, tune_problem
from lutc.tuning.space import Problem

P = Problem(bits=2, group_size=128, M=1, N=64, K=256)
LUT_PATH = {"path": "lut", "dot_bm": 8, "dot_ns": 16, "act_block": 128, "act_residual": True}   # dot knobs: defaults
FAST = dict(repeats=3, retries=0, final_rounds=1, finalists_k=2, cache="hot", timeout=120)


def test_a_fast_wrong_candidate_is_never_chosen(tmp_path, monkeypatch):
    monkeypatch.setenv("LUTC_TUNING_DB", str(tmp_path / "none"))
    monkeypatch.setenv("LUTC_TUNE_FAULTS", "bn=16:wrong_result")
    url = f"sqlite:///{tmp_path / 'g.db'}"
    study = optuna.create_study(study_name=study_name(P, "g", "hot"), storage=open_storage(url))
    base = {"g": 4, "lut_dtype": "int8", "lut_scale_block": 16, "lut_centered": True, "unroll": 2, "mb": 1,
            "interleave": "chunk", "threads": 1, "lut_scale_ratio": 64, **LUT_PATH}     # the W2 default tables
    for bn in (16, 32, 64):   # 16: never a default layout (the final run times the default too)
        study.enqueue_trial(dict(base, bn=bn))
    r = tune_problem(P, storage=url, trials=3, seed=0, prefix="g", db_path=tmp_path, **FAST)
    trials = optuna.load_study(study_name=study.study_name, storage=open_storage(url)).get_trials(deepcopy=False)
    by = {t.params["bn"]: t for t in trials[:3]}
    assert by[16].state.name == "FAIL" and by[16].user_attrs["status"] == "inaccurate", by[16].user_attrs
    assert by[32].state.name == "COMPLETE" and by[64].state.name == "COMPLETE"
    assert r.best is not None and r.best.bn != 16
    e = TuningDB.load(db_file(tmp_path, host_device_id())).get("lut_gemm", 2, 128, 1, 64, 256)
    assert e is not None and e["schedule"]["bn"] != 16 and e["err_ratio"] <= 1


def test_a_fast_imprecise_table_precision_is_never_chosen(tmp_path, monkeypatch):
    """The pre-issue-10 int8 tables (one scale per group, uncentered) compute correctly within
    their own bound, but their error on outlier activations would cost model quality: the
    quality gate fails them; the default W2 tables (centered, per 16, integer ratios) pass."""
    monkeypatch.setenv("LUTC_TUNING_DB", str(tmp_path / "none"))
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = optuna.create_study(study_name=study_name(P, "q", "hot"), storage=open_storage(url))
    base = {"g": 4, "lut_dtype": "int8", "unroll": 2, "mb": 1, "interleave": "chunk", "threads": 1, "bn": 32,
            "lut_scale_ratio": 64, **LUT_PATH}
    study.enqueue_trial(dict(base, lut_scale_block=128, lut_centered=False))
    study.enqueue_trial(dict(base, lut_scale_block=16, lut_centered=True))
    r = tune_problem(P, storage=url, trials=2, seed=0, prefix="q", db_path=tmp_path, **FAST)
    trials = optuna.load_study(study_name=study.study_name, storage=open_storage(url)).get_trials(deepcopy=False)
    old, new = trials[:2]
    assert old.state.name == "FAIL" and old.user_attrs["status"] == "inaccurate", old.user_attrs
    assert "quality gate" in old.user_attrs["reason"]
    assert new.state.name == "COMPLETE", new.user_attrs
    assert r.best is not None and (r.best.lut_scale_block, r.best.lut_centered) != (128, False)
