"""The int8 dot path (lutc/kernels/dotgemm.py, Schedule path="dot") against its numpy reference:
bits 1-4, group sizes 32/64/128, ragged N and K, M = 1 and M > 1, negative plane scales, edge
activations; the host (vpdpbusd) and the x86-avx2 (vpmaddubsw, levels <= 127) code; the
accuracy gate's bound; schedule rules; the runtime's prefill through the dot path."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quant
from lutc import Schedule
from lutc.backend.target import get_target
from lutc.backend.toolchain import native_mismatch
from lutc.kernels.compiled import CompiledKernel
from lutc.kernels.dotgemm import act_i16, level_max
from lutc.ops import get_kernel
from lutc.schedule import DOT_KNOB_CHOICES
from lutc.tuning.accuracy import ErrorBound
from kernel_reference import dot_reference
from test_kernels import XKINDS, activations


def signed_qt(rng, bits, gs, N, K):
    """A QuantizedTensor with random codes and plane scales of both signs (HLQ's least squares can
    give negative ones), zeros of both signs."""
    ng = -(-K // gs)
    codes = rng.integers(0, 1 << bits, (N, K)).astype(np.uint8)
    scales = (rng.standard_normal((bits, N, ng)) * 0.05).astype(np.float16)
    scales[:, rng.random(N) < 0.1] = 0                       # some all-zero rows (step 0)
    zeros = (rng.standard_normal((N, ng)) * 0.05).astype(np.float16)
    return quant.QuantizedTensor(bits=bits, group_size=gs, shape=(N, K), codes=codes, scales=scales,
                                 zeros=zeros, method="rtn")


@st.composite
def dot_problems(draw):
    bits = draw(st.integers(1, 4))
    gs = draw(st.sampled_from([32, 64, 128]))
    bn = draw(st.sampled_from([16, 32, 64]))
    knobs = dict(path="dot", g=draw(st.sampled_from([2, 4])), bn=bn,
                 interleave=draw(st.sampled_from(["chunk", "plane"])),
                 dot_bm=draw(st.sampled_from(DOT_KNOB_CHOICES["dot_bm"])),
                 dot_ns=draw(st.sampled_from([n for n in DOT_KNOB_CHOICES["dot_ns"] if bn % n == 0])),
                 act_block=draw(st.sampled_from([32, 64, 128])), act_residual=draw(st.booleans()))
    N = draw(st.integers(1, 80))
    K = draw(st.one_of(st.integers(1, 200), st.sampled_from([gs, 2 * gs + 1])))
    M = draw(st.sampled_from([1, 2, 17, 40]))
    return bits, gs, knobs, N, K, M, draw(st.integers(0, 2**16)), draw(st.sampled_from(XKINDS)), \
        draw(st.sampled_from(["signed", "hlq"]))


def _weights(rng, bits, gs, N, K, kind):
    if kind == "signed":
        return signed_qt(rng, bits, gs, N, K)
    return quant.quantize(rng.standard_normal((N, K)).astype(np.float32), bits, gs, method="hlq", rounds=2)


def _check(y, x, qw, sched, wmax):
    ref, mag = dot_reference(x, qw, sched.act_scale_block, wmax, sched.act_residual)
    assert y.shape == ref.shape and np.isfinite(y).all()
    err = np.abs(y.astype(np.float64) - ref)
    tol = 2e-6 * (qw.num_groups + 8) * mag + 1e-30
    worst = np.unravel_index(int(np.argmax(err - tol)), err.shape)
    assert (err <= tol).all(), f"{sched}: err {err[worst]:.3g} > {tol[worst]:.3g} at {worst}"


@settings(max_examples=12)          # each example compiles its own kernels
@given(dot_problems())
def test_dot_path_matches_reference(p):
    bits, gs, knobs, N, K, M, seed, xkind, wkind = p
    rng = np.random.default_rng(seed)
    qw = _weights(rng, bits, gs, N, K, wkind)
    x = activations(rng, M, K, xkind, gs)
    sched = Schedule.make(bits=bits, group_size=gs, **knobs)
    y = get_kernel(sched)(x, qw, threads=2)
    _check(y, x, qw, sched, level_max("host", sched.act_residual))


def _xq_reference(x, gs, xb, bm, res, a16=False):
    """quantize_x's scratch in numpy: per (row, xb block) s = max|x| / 127, q = round(x / s) (and the
    residual round((x - s q) / (s / 254))), in the [m-block][32-block][row][k % 32] order (each
    32-block followed by its residual block; a16: one int16 254 q + r instead of the two);
    scales [m-block][group][block][row]; group sums."""
    M, K = x.shape
    ng, mp = -(-K // gs), -(-M // bm) * bm
    xp = np.zeros((mp, ng * gs), np.float32)
    xp[:M, :K] = x
    blocks = xp.reshape(mp, -1, xb)
    s = (np.abs(blocks).max(-1) / np.float32(127)).astype(np.float32)
    safe = np.where(s > 0, s, np.float32(1))[..., None]
    q = np.round(blocks / safe)
    planes = [q] + ([np.round((blocks - q * s[..., None]) / (safe * np.float32(1 / 254)))] if res else [])
    if a16:
        planes = [254 * planes[0] + planes[1]]
    tiles = [p.reshape(mp // bm, bm, -1, 32).transpose(0, 2, 1, 3) for p in planes]   # mb, kb, row, k%32
    luts = np.stack(tiles, 2).reshape(-1).astype(np.int16 if a16 else np.int8)
    scales = s.reshape(mp // bm, bm, ng, gs // xb).transpose(0, 2, 3, 1).reshape(-1)
    sums = xp.reshape(mp, ng, gs).sum(-1).reshape(mp // bm, bm, ng).transpose(0, 2, 1).reshape(-1)
    return luts, scales, sums


@settings(max_examples=10)
@given(st.sampled_from([32, 64, 128]), st.sampled_from([16, 32]), st.sampled_from([32, 64, 128]), st.booleans(),
       st.integers(1, 300), st.sampled_from([1, 2, 17, 40]), st.sampled_from(XKINDS), st.integers(0, 2**16))
def test_quantize_x_matches_numpy(gs, bm, xb, res, K, M, xkind, seed):
    """The int8 activations, scales and group sums quantize_x writes, byte for byte (rows < M)."""
    xb = min(xb, gs)
    rng = np.random.default_rng(seed)
    x = activations(rng, M, K, xkind)
    qw = signed_qt(rng, 2, gs, 16, K)
    s = Schedule(bits=2, group_size=gs, path="dot", dot_bm=bm, dot_ns=4, act_block=xb, act_residual=res)
    k = get_kernel(s)
    plan = k.plan(k.pack(qw), M)
    plan.run_unchecked(x, np.zeros((M, 16), np.float32), 1)
    a16 = res and act_i16("host")
    luts, scales, sums = _xq_reference(x, gs, xb, bm, res, a16)
    mp, ng = -(-M // bm) * bm, qw.num_groups
    real = np.zeros((mp, 1), bool)
    real[:M] = True
    row_of = lambda a, per: np.broadcast_to(real.reshape(mp // bm, 1, bm, 1), (mp // bm, a.size // (mp * per), bm, per))
    got = plan.scratch.luts[:luts.nbytes].view(luts.dtype).reshape(mp // bm, -1, bm, 32)
    want = luts.reshape(got.shape)
    keep = row_of(luts, 32).reshape(got.shape)
    np.testing.assert_array_equal(got[keep], want[keep])
    keep = row_of(scales, 1).reshape(-1)
    np.testing.assert_allclose(plan.scratch.lut_scales[:scales.size][keep], scales[keep], rtol=1e-6, atol=0)
    keep = row_of(sums, 1).reshape(-1)
    np.testing.assert_allclose(plan.scratch.xsums[:sums.size][keep], sums[keep], rtol=1e-5,
                               atol=1e-5 * np.abs(x).sum(1).max())


def test_edge_activations():
    """Rows of +-max, a single nonzero, tiny values (scale underflow to subnormal) and all zeros."""
    rng = np.random.default_rng(3)
    qw = signed_qt(rng, 3, 64, 40, 192)
    x = rng.standard_normal((6, 192)).astype(np.float32)
    x[0] = 1.0e30
    x[0, ::2] = -1.0e30
    x[1] = 0.0
    x[1, 77] = 5.0
    x[2] *= 1e-40
    x[3] = 0.0
    x[4, :64] = 127.0
    sched = Schedule(bits=3, group_size=64, path="dot", dot_bm=16, dot_ns=8, act_block=32, act_residual=True)
    _check(get_kernel(sched)(x, qw), x, qw, sched, level_max("host", True))


@pytest.mark.parametrize("bits,gs,N,K,M,bm,ns,ab,res", [(2, 128, 70, 300, 40, 32, 8, 128, True),
                                                       (4, 64, 33, 130, 5, 16, 4, 32, False),
                                                       (1, 32, 16, 96, 64, 64, 4, 32, True),
                                                       (3, 128, 100, 256, 17, 16, 16, 64, False)])
def test_avx2_target(bits, gs, N, K, M, bm, ns, ab, res):
    """The x86-avx2 code against the same reference: without the residual levels <= 127 and
    vpmaddubsw (proven safe), with it the int16 form (254 xq + xq2 by vpmaddwd, levels <= 255)."""
    tgt = get_target("x86-avx2")
    if native_mismatch(tgt) is not None:
        pytest.skip("x86-avx2 code cannot run here")
    assert level_max(tgt) == 127 and level_max(tgt, True) == 255 and act_i16(tgt)
    rng = np.random.default_rng(bits * 7 + M)
    qw, x = signed_qt(rng, bits, gs, N, K), activations(rng, M, K, "outliers", gs)
    sched = Schedule(bits=bits, group_size=gs, path="dot", dot_bm=bm, dot_ns=ns, act_block=ab, act_residual=res)
    kern = CompiledKernel(sched, tgt)
    asm = kern.emit("asm")
    assert ("vpmaddubsw" in asm) != res and "vpmaddwd" in asm and "vpdpbusd" not in asm
    _check(kern(x, qw), x, qw, sched, level_max(tgt, res))


def test_host_uses_vnni_when_present():
    host = get_target("host")
    if not (host.has("avx512vnni") or host.has("avxvnni")):
        pytest.skip("no VNNI on this host")
    assert level_max(host) == 255
    asm = get_kernel(Schedule(bits=2, group_size=128, path="dot")).emit("asm")
    assert "vpdpbusd" in asm


def test_accuracy_gate_bound_holds_and_catches_a_wrong_kernel():
    from lutc.tuning.accuracy import probe_activations
    rng = np.random.default_rng(5)
    for bits, gs, ab, res in ((2, 64, 32, False), (4, 128, 128, True)):
        qw = quant.quantize(rng.standard_normal((96, 256)).astype(np.float32), bits, gs, method="rtn")
        x = probe_activations(rng, 20, 256)
        sched = Schedule(bits=bits, group_size=gs, path="dot", act_block=ab, dot_bm=16, dot_ns=16, act_residual=res)
        eb = ErrorBound(qw, x)
        y = get_kernel(sched)(x, qw)
        assert eb.check(y, sched)["ratio"] <= 1.0
        y[3, 5] += 0.2 * np.abs(eb.ref).max()           # one wrong output
        assert not eb.check(y, sched)["ok"]


def test_schedule_rules():
    with pytest.raises(ValueError, match="g 2 or 4"):
        Schedule(bits=2, group_size=128, g=3, path="dot")
    with pytest.raises(ValueError, match="multiple of 32"):
        Schedule(bits=2, group_size=48, path="dot")
    with pytest.raises(ValueError, match="act_block"):
        Schedule(bits=2, group_size=96, path="dot", act_block=64)
    s = Schedule(bits=2, group_size=128, path="dot")
    assert s.with_layout(Schedule(bits=2, group_size=128, g=3, bn=64)).path == "lut"
    assert s.with_layout(Schedule(bits=2, group_size=128, g=2, bn=64)).path == "dot"
    assert s.act_scale_block == 128 and Schedule(bits=2, group_size=64, path="dot").act_scale_block == 64


def test_default_chooses_dot_by_m_bucket():
    from lutc.ops import DOT_MIN_M, default_schedule
    if level_max("host") != 255:
        pytest.skip("no u8 x s8 dot instruction here: the default stays on the LUT path")
    assert default_schedule(4, 128, 1).path == "lut"
    assert default_schedule(4, 128, DOT_MIN_M - 1).path == "lut"
    big = default_schedule(4, 128, 128)
    assert big.path == "dot" and (big.dot_bm, big.dot_ns) == (8, 16) and big.act_residual and big.prefetch == 0
    assert default_schedule(4, 48, 128).path == "lut"          # group size not a multiple of 32
    assert default_schedule(2, 128, 16).path == "lut"          # the W2 tie: LUT below 32 rows
    assert default_schedule(2, 128, 128).path == "dot"


def test_default_path_rule_by_bits_and_rows():
    """dot_preferred: bit-planes vs (1 + residual) x instructions per group dot; ties from 32 rows."""
    from lutc.ops import DOT_MIN_M, choose_schedule, default_schedule, dot_preferred
    from lutc.kernels.dotgemm import dot_insns
    s = Schedule(bits=2, group_size=128, mb=2)
    assert dot_preferred(3, 16, s) and dot_preferred(4, 16, s) and not dot_preferred(1, 128, s)
    assert not dot_preferred(2, 16, s) and dot_preferred(2, 32, s)               # the VNNI tie: dot from 32 rows
    assert dot_preferred(2, 16, s.replace(act_residual=False))                      # one dot < two planes
    assert not dot_preferred(3, 128, s, insns=2) and dot_preferred(4, 32, s, insns=2)
    assert not dot_preferred(4, 16, s, insns=2)
    insns = dot_insns("host")
    for bits in (1, 2, 3, 4):
        for M in (1, DOT_MIN_M - 1, 16, 32, 128):
            want = insns is not None and M >= DOT_MIN_M and dot_preferred(bits, M, s, insns)
            assert (default_schedule(bits, 128, M).path == "dot") == want, (bits, M)
    assert choose_schedule(4, 128, 16, 576, 576) == default_schedule(4, 128, 16)
    if native_mismatch(get_target("x86-avx2")) is None:   # AVX2: the int16 form, 2 vpmaddwd per 4 weights
        assert dot_insns("x86-avx2") == 1
        assert [default_schedule(b, 128, 128, "x86-avx2").path for b in (1, 2, 3, 4)] == ["lut"] + ["dot"] * 3
        assert default_schedule(2, 128, 16, "x86-avx2").path == "lut"
        d = default_schedule(4, 128, 128, "x86-avx2")
        assert (d.dot_bm, d.dot_ns) == (32, 16)


def test_tuner_space_has_the_path_knob():
    from lutc.tuning.space import Problem, describe, invalid_reason, params_of, schedule_from_params, space_for
    p = Problem(2, 128, 128, 256, 512)
    sp = space_for(p, 2)
    assert sp["path"] == ("lut", "dot") and sp["act_block"] == (32, 64, 128)
    assert space_for(Problem(2, 48, 128, 256, 480), 2)["path"] == ("lut",)
    assert space_for(Problem(2, 128, 1, 256, 512), 2)["dot_bm"] == (8,)     # no blocks of padding rows
    params = params_of(Schedule(bits=2, group_size=128), 2)
    dot = schedule_from_params(p, dict(params, path="dot", dot_bm=64))
    assert invalid_reason(dot, p) is None and describe(dot).startswith("dot ")
    assert schedule_from_params(p, dict(params, path="dot", dot_bm=64, mb=2, lut_dtype="float16")) == dot  # canonical
    lut = schedule_from_params(p, params)
    assert invalid_reason(lut, p) is None
    assert schedule_from_params(p, dict(params, dot_bm=64, act_residual=False)) == lut
    with pytest.raises(ValueError, match="g 2 or 4"):
        schedule_from_params(p, dict(params, path="dot", g=3))


def test_runtime_prefill_through_the_dot_path():
    """A small model: prefill chunks take the dot path (schedule of their M bucket), decode the LUT
    path; greedy tokens equal those of the LUT path everywhere."""
    pytest.importorskip("transformers")
    from runtime import LeanDecoder
    from runtime._testing import quantize_hf, runtime_greedy, tiny_llama
    qm = quantize_hf(tiny_llama(seed=2), 4, 64)
    dot = LeanDecoder(qm, n_ctx=96, threads=2, max_prefill=32, knobs={"act_block": 32})
    lut = LeanDecoder(qm, n_ctx=96, threads=2, max_prefill=32, knobs={"path": "lut"})
    lw = dot.layers[0].gu
    assert lw.schedule_for(1).path == "lut" and lw.schedule_for(32).path == "dot"
    assert lw.schedule_for(20) is lw.schedule_for(32) and lw.schedule_for(3).path == "lut"
    assert all(s.path == "lut" for s in lut.layers[0].gu.by_bucket.values())
    prompt = [1, 17, 17, 17, 42, 250, 3, 99, 128, 64, 12, 5, 7, 9, 33, 100, 200, 31, 8, 2, 77, 41]
    assert runtime_greedy(dot, prompt, 12) == runtime_greedy(lut, prompt, 12)
    a = dot.prefill(prompt, all_logits=True) if not dot.reset() else None
    b = lut.prefill(prompt, all_logits=True) if not lut.reset() else None
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()


def test_host_target_override(monkeypatch):
    """LUTC_HOST_TARGET=x86-avx2: "host" kernels (the runtime's) are the AVX2 code."""
    if native_mismatch(get_target("x86-avx2")) is not None:
        pytest.skip("x86-avx2 code cannot run here")
    monkeypatch.setenv("LUTC_HOST_TARGET", "x86-avx2")
    t = get_target("host")
    assert t.name == "x86-avx2" and t.is_host and level_max("host") == 127 and act_i16("host")
    from lutc.ops import default_schedule
    assert default_schedule(2, 128, 16).path == "lut" and default_schedule(2, 128, 128).path == "dot"  # the W2 tie


def test_scratch_starts_zeroed():
    """Fresh scratch holds zeros: a dot block of dot_bm rows reads the scales of rows past M, and
    leftover heap bytes there (NaNs, denormals) made dot GEMMs 3-4x slower (results were masked)."""
    from lutc.kernels.compiled import Scratch
    s = Schedule(bits=4, group_size=128).replace(path="dot", dot_bm=16, dot_ns=8)
    for _ in range(3):
        junk = np.full(1 << 16, 0xFF, np.uint8)       # leave non-zero bytes in freed heap memory
        del junk
        sc = Scratch.for_schedules([s], 16, 8)
        assert not sc.luts.any() and not sc.lut_scales.any() and not sc.xsums.any()
