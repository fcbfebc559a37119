"""Tests for the thread pool's program entry (one publish per program, barriers between launches)
and lutc.launcher.LaunchProgram."""
import os

import numpy as np
import pytest
from _pool_tasks import (NESTED_INNER, build_program_kernels, chain as _chain, counts as _counts,
                         expected_chain as _expected_chain, run_script, tp, wait_child)

_KEEP = []


@pytest.fixture(scope="module")
def prog_env():
    pool = tp.get_pool()
    engines, entries = build_program_kernels(pool)
    yield pool, entries
    _KEEP.extend(engines)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_program_barriers_order_and_many_steps(prog_env, threads):
    """Each launch observes all writes of the previous one (rowsum reads the whole row), launches
    run in order and exactly once (counter), over many runs of the same program, for serial and
    parallel launches mixed; with 1 thread every launch dispatches itself (the old path)."""
    pool, entries = prog_env
    rng = np.random.default_rng(threads)
    widths = [int(w) for w in rng.integers(1, 70, size=24)]
    rows = [np.zeros(70, np.int64) for _ in widths]
    rows[0][:] = rng.integers(-5, 5, size=70)
    counts, nested = _counts(9), _counts(5 * NESTED_INNER)
    recs, blocks = _chain(entries, rows, widths, threads)
    recs.insert(7, (entries["counter"], counts.ctypes.data, 9, 1))
    recs.insert(12, (entries["counter"], counts.ctypes.data, 9, threads))
    recs.insert(15, (entries["nested"], nested.ctypes.data, 5, threads))      # tasks call lutc_pool_run
    records = np.array(recs, np.int64)
    want = _expected_chain(rows[0].copy(), widths)
    steps = 300
    for step in range(steps):
        for r in rows[1:]:
            r[:] = -1
        pool.run_program(records, threads)
        if step % 50 == 0 or step == steps - 1:
            for j, (got, exp) in enumerate(zip(rows, want)):
                assert np.array_equal(got[:widths[j]], exp), (step, j)
    assert np.array_equal(counts, 2 * steps * np.arange(1, 10))
    assert np.array_equal(nested.reshape(5, NESTED_INNER), steps * np.tile(np.arange(1, NESTED_INNER + 1), (5, 1)))
    del blocks


def test_program_sleep_and_wake_paths_with_zero_spin(prog_env):
    """spin budget 0: walkers park between every two phases and the caller parks at every barrier
    a walker still holds -- every condition-variable hand-off of the program protocol."""
    pool, entries = prog_env
    saved = pool.spin_iters
    pool.set_spin_iters(0)
    try:
        widths = [33, 17, 64, 5, 40, 2, 64]
        rows = [np.arange(64, dtype=np.int64) for _ in widths]
        recs, blocks = _chain(entries, rows, widths, 2, serial_every=4)
        records = np.array(recs, np.int64)
        want = _expected_chain(rows[0].copy(), widths)
        for _ in range(200):
            pool.run_program(records, 2)
        for got, exp, w in zip(rows, want, widths):
            assert np.array_equal(got[:w], exp)
    finally:
        pool.set_spin_iters(saved)


def test_program_validation_and_empty(prog_env):
    pool, entries = prog_env
    pool.run_program(np.zeros((0, 4), np.int64), 2)                 # nothing to do
    for bad in (np.zeros((2, 3), np.int64), np.zeros((2, 4), np.int32), np.zeros((4, 4), np.int64)[:, ::2].copy().T,
                [[0, 0, 0, 0]]):
        with pytest.raises(ValueError):
            pool.run_program(bad, 2)
    with pytest.raises(ValueError):
        pool.run_program(np.zeros((0, 4), np.int64), 0)


def test_program_after_shutdown(prog_env):
    pool, entries = prog_env
    counts = _counts(40)
    records = np.array([(entries["counter"], counts.ctypes.data, 40, 2)] * 3, np.int64)
    pool.run_program(records, 2)
    pool.shutdown()
    assert pool.nworkers == 0
    pool.run_program(records, 2)                                    # workers come back lazily
    assert pool.nworkers >= 1
    assert np.array_equal(counts[:40], 6 * np.arange(1, 41))


_OVERSUBSCRIBED_SCRIPT = """
import os, sys, numpy as np
sys.path.insert(0, {tests!r})
os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})    # one core for caller + 3 walkers
import _pool_tasks as T
pool = T.tp.get_pool()
engines, entries = T.build_program_kernels(pool)
widths = [50, 31, 64, 7, 64, 19, 64, 3, 64]
rows = [np.arange(64, dtype=np.int64) for _ in widths]
recs, blocks = T.chain(entries, rows, widths, 4)
records = np.array(recs, np.int64)
want = T.expected_chain(rows[0].copy(), widths)
for _ in range(300):
    pool.run_program(records, 4)
assert all(np.array_equal(g[:w], e) for g, e, w in zip(rows, want, widths))
print("ok", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_program_with_descheduled_walkers():
    """4 threads on one core: walkers are descheduled mid-program all the time; no deadlock, the
    results stay right, and the process exits cleanly (walkers joined at exit)."""
    run_script(_OVERSUBSCRIBED_SCRIPT)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_program_in_forked_child(prog_env):
    pool, entries = prog_env
    counts = _counts(30)
    records = np.array([(entries["counter"], counts.ctypes.data, 30, 3)] * 2, np.int64)
    pool.run_program(records, 3)                                    # live walkers in the parent
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            pool.run_program(records, 3)                            # stale pool: entries dispatch themselves
            new = tp.get_pool()
            new.run_program(records, 3)
            code = 0 if np.array_equal(counts[:30], 6 * np.arange(1, 31)) else 2
        finally:
            os._exit(code)
    status = wait_child(pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_launch_program_of_dsl_kernels():
    """lutc.launcher.LaunchProgram over DSL kernels: the program entry (run) and one job per launch
    (run_per_launch) give numpy's chain of row sums, for 1-thread and 2-thread launches mixed."""
    import lutc
    import lutc.language as tl
    from lutc.launcher import LaunchProgram

    @lutc.jit
    def tpp_rowsum(src, dst, BLOCK: tl.constexpr):
        s = tl.sum(tl.load(src + tl.arange(0, BLOCK)))
        tl.store(dst + tl.program_id(0), s + tl.program_id(0).to(tl.float32) * 0.5)

    rows = [np.linspace(-1, 1, 64, dtype=np.float32)] + [np.zeros(64, np.float32) for _ in range(12)]
    steps = []
    for j in range(12):
        launch = _dsl_launch(tpp_rowsum, rows[j], rows[j + 1])
        steps.append((launch, 1 if j % 3 == 1 else 2))
    prog = LaunchProgram(steps)
    want = [rows[0]]
    for _ in range(12):
        want.append(np.float32(want[-1].astype(np.float64).sum()) + np.arange(64, dtype=np.float32) * 0.5)
    for run in (prog.run, prog.run_per_launch, prog.run):
        for r in rows[1:]:
            r[:] = np.nan
        run()
        for got, exp in zip(rows, want):
            np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)
    assert prog.nthreads == 2 and len(prog) == 12


def _dsl_launch(jitfn, src, dst):
    from lutc.ir import types as T
    ptr = T.PointerType(T.float32)
    return jitfn.compile({"src": ptr, "dst": ptr}, {"BLOCK": 64}).bind((64,), [src, dst])
