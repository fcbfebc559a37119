"""Property tests: every LUT-GEMM schedule against a numpy reference built from dequantize()."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lutc
import quant
from lutc import Schedule
from lutc.schedule import KNOB_CHOICES, LUT_SCALE_BLOCKS, LUT_SCALE_RATIOS
from kernel_reference import error_bound, int8_lookup_error, reference

XKINDS = ("normal", "outliers", "zeros", "same_sign")


@st.composite
def problems(draw):
    bits = draw(st.integers(1, 4))
    gs = draw(st.sampled_from([32, 64, 128]))
    knobs = {k: draw(st.sampled_from(v)) for k, v in KNOB_CHOICES.items()}
    knobs["lut_scale_block"] = draw(st.sampled_from(LUT_SCALE_BLOCKS + (8, 24, 1000)))
    knobs["lut_centered"] = draw(st.booleans())
    knobs["lut_scale_ratio"] = draw(st.sampled_from(LUT_SCALE_RATIOS + (1, 3, 100)))
    knobs["lut_pair"] = draw(st.booleans())
    knobs["lut_fine_planes"] = draw(st.sampled_from([0, 0, 1, 2, bits]))
    knobs["lut_fine_planes"] = min(knobs["lut_fine_planes"], bits)
    N = draw(st.integers(1, 150))
    K = draw(st.one_of(st.integers(1, 300), st.sampled_from([gs, 2 * gs, 3 * gs + 1])))
    M = draw(st.sampled_from([1, 2, 7, 33]))
    seed = draw(st.integers(0, 2**16))
    method = draw(st.sampled_from(["rtn", "hlq"]))
    xkind = draw(st.sampled_from(XKINDS))
    return bits, gs, knobs, N, K, M, seed, method, xkind


def activations(rng, M, K, kind="normal", gs=64):
    """normal; outliers (a few channels 100x); zeros (exact zeros: scattered, whole channels and a
    whole group); same_sign (every group all positive or all negative)."""
    x = rng.standard_normal((M, K))
    if kind == "outliers":
        x[:, rng.choice(K, max(1, K // 100), replace=False)] *= 100.0
    elif kind == "zeros":
        x[rng.random((M, K)) < 0.3] = 0.0
        x[:, rng.choice(K, max(1, K // 10), replace=False)] = 0.0
        x[:, :min(K, gs)] = 0.0
    elif kind == "same_sign":
        x = np.abs(x)
        for g0 in range(0, K, gs):
            x[:, g0:g0 + gs] *= rng.choice([-1.0, 1.0], size=(M, 1))
    return x.astype(np.float32)


def _case(bits, gs, knobs, N, K, M, seed, method, xkind="normal"):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32)
    qw = quant.quantize(w, bits, gs, method=method, rounds=3)
    return qw, activations(rng, M, K, xkind, gs)


@given(problems())
def test_lut_gemm_matches_reference(p):
    bits, gs, knobs, N, K, M, seed, method, xkind = p
    qw, x = _case(*p)
    sched = Schedule.make(bits=bits, group_size=gs, **knobs)
    kernel = lutc.compile(sched)
    y1 = kernel(x, qw, threads=1)
    y2 = kernel(x, qw, threads=2)
    assert y1.shape == (M, N) and y1.dtype == np.float32
    np.testing.assert_array_equal(y1, y2)  # threads split rows; results are bit-identical
    ref, _ = reference(x, qw)
    err = np.abs(y1.astype(np.float64) - ref)
    bound = error_bound(x, qw, sched)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (f"{sched}: err {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}")


@pytest.mark.parametrize("lut_dtype", ["int8", "float16", "float32"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_every_table_precision_and_width(bits, lut_dtype):
    """A fixed ragged case per (bits, table precision): N, K not multiples of tile or group."""
    qw, x = _case(bits, 64, {}, 77, 201, 7, bits, "hlq")
    sched = Schedule.make(bits=bits, group_size=64, lut_dtype=lut_dtype)
    y = lutc.compile(sched)(x, qw)
    ref, _ = reference(x, qw)
    assert (np.abs(y - ref) <= error_bound(x, qw, sched)).all()


def test_float32_tables_are_near_exact():
    qw, x = _case(3, 128, {}, 100, 576, 2, 1, "hlq")
    y = lutc.compile(Schedule.make(bits=3, group_size=128, lut_dtype="float32"))(x, qw)
    ref, mag = reference(x, qw)
    assert np.abs(y - ref).max() <= 1e-5 * mag.max()


def test_error_bound_is_not_vacuous():
    """The int8 bound must be tight enough to catch a wrong kernel (here: a dropped bit-plane)."""
    qw, x = _case(2, 128, {}, 64, 512, 1, 3, "rtn")
    sched = Schedule.make(bits=2, group_size=128)
    y = lutc.compile(sched)(x, qw)
    ref, _ = reference(x, qw)
    bound = error_bound(x, qw, sched)
    assert (np.abs(y - ref) <= bound).all()
    wrong_qw = quant.QuantizedTensor(qw.bits, qw.group_size, qw.shape, qw.codes & 1, qw.scales, qw.zeros)
    wrong = lutc.compile(sched)(x, wrong_qw)
    assert (np.abs(wrong - ref) > bound).any()


def test_m_zero_and_vector_input():
    qw, x = _case(2, 32, {}, 10, 40, 1, 0, "rtn")
    k = lutc.compile(Schedule.make(bits=2, group_size=32))
    assert k(np.zeros((0, 40), np.float32), qw).shape == (0, 10)
    np.testing.assert_array_equal(k(x[0], qw), k(x, qw)[0])


def test_torch_input_output():
    torch = pytest.importorskip("torch")
    qw, x = _case(4, 32, {}, 20, 64, 3, 0, "rtn")
    k = lutc.compile(Schedule.make(bits=4, group_size=32))
    yt = k(torch.from_numpy(x), qw)
    assert isinstance(yt, torch.Tensor)
    np.testing.assert_array_equal(yt.numpy(), k(x, qw))


def test_ops_lut_gemm_and_packing_cache():
    qw, x = _case(2, 128, {}, 50, 300, 2, 5, "hlq")
    y = lutc.ops.linear(x, qw, threads=2)
    sched = lutc.ops.choose_schedule(2, 128, 2, 50, 300)
    ref, _ = reference(x, qw)
    assert (np.abs(y - ref) <= error_bound(x, qw, sched)).all()
    k = lutc.ops.get_kernel(sched)
    assert k.pack(qw) is k.pack(qw)  # packed once per tensor and layout
    assert lutc.ops.get_kernel(sched) is k


def test_launch_plans_are_reused_and_bounded():
    from lutc.kernels import compiled
    qw, x = _case(2, 32, {}, 40, 64, 1, 0, "rtn")
    k = lutc.compile(Schedule.make(bits=2, group_size=32))
    packed = k.pack(qw)
    assert k.plan(packed, 1) is k.plan(packed, 1)
    for m in range(1, 20):
        xm = np.ones((m, 64), np.float32)
        np.testing.assert_array_equal(k(xm, packed)[-1], k(xm[:1], packed)[0])
    assert len(packed.plans) <= compiled._MAX_PLANS_PER_WEIGHT


@pytest.mark.parametrize("bits,gs,knobs,N,K,M", [
    (2, 1024, dict(g=2), 40, 3000, 2),              # int32 accumulators (512 tables per group)
    (3, 100, dict(g=3), 33, 250, 3),                # group not a multiple of g, partial groups
    (4, 48, dict(lut_dtype="float16"), 17, 97, 1),
    (1, 7, dict(g=3, bn=128), 20, 50, 2),
])
def test_odd_group_sizes(bits, gs, knobs, N, K, M):
    qw, x = _case(bits, gs, knobs, N, K, M, 7, "hlq")
    sched = Schedule.make(bits=bits, group_size=gs, **knobs)
    ref, _ = reference(x, qw)
    assert (np.abs(lutc.compile(sched)(x, qw) - ref) <= error_bound(x, qw, sched)).all()


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512", "generic-x86"])
@pytest.mark.parametrize("lut_dtype,pair", [("int8", True), ("int8", False), ("float32", True)])
def test_named_x86_targets_compute_correctly(target, lut_dtype, pair):
    """Code for other x86 targets (AVX2 vpshufb, the portable select-chain fallback) runs here
    when this CPU has their features; it must match the reference too."""
    from lutc.backend.toolchain import runs_here
    from lutc.backend.target import get_target
    if not runs_here(get_target(target)):
        pytest.skip(f"this CPU lacks features of {target}")
    qw, x = _case(3, 64, {}, 70, 150, 3, 11, "hlq")
    sched = Schedule.make(bits=3, group_size=64, lut_dtype=lut_dtype, bn=64, lut_pair=pair)
    y = lutc.compile(sched, target=target)(x, qw, threads=2)
    ref, _ = reference(x, qw)
    assert (np.abs(y - ref) <= error_bound(x, qw, sched)).all()


@pytest.mark.parametrize("target", ["host", "x86-avx2", "x86-avx512"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_default_layouts_every_width(target, bits):
    """The untuned default schedules (lutc.ops.default_schedule) of the AVX-512 target (64-row
    tiles, pair-sum lookups), of AVX2 (32-row pairs) and of the portable targets (32-row single
    lookups), compiled for `target`: ragged N and K, M = 1 (mb 1) and M = 4, 7 (mb 4, with a leftover
    pass of 2 and row), outlier activations, every table precision, 1 and 2 threads bit-identical."""
    from lutc.backend.target import get_target
    from lutc.backend.toolchain import runs_here
    from lutc.ops import default_schedule
    if target != "host" and not runs_here(get_target(target)):
        pytest.skip(f"this CPU lacks features of {target}")
    gs = 64 if bits <= 2 else 128
    rng = np.random.default_rng(bits)
    qw, _ = _case(bits, gs, {}, 70, 3 * gs + 5, 1, bits, "hlq")
    for M in (1, 4, 7):
        x = activations(rng, M, 3 * gs + 5, "outliers", gs)
        ref, _ = reference(x, qw)
        scheds = {default_schedule(bits, gs, M, t) for t in ("x86-avx512", "x86-avx2", "generic-x86")}
        scheds |= {s.replace(lut_dtype=d) for s in list(scheds) for d in ("float16", "float32")} if bits == 2 else set()
        for sched in scheds:
            k = lutc.compile(sched, target=target)
            y = k(x, qw, threads=1)
            np.testing.assert_array_equal(y, k(x, qw, threads=2))
            assert (np.abs(y - ref) <= error_bound(x, qw, sched)).all(), (target, sched)


def test_int8_bound_is_tight_and_independent():
    """The reference bound (subset enumeration) reproduces the int8 error model: the per-group
    lookup error shrinks with the scale block and with centering, and the kernel's worst error
    reaches a fair fraction of it (a loose bound would hide an imprecise kernel)."""
    rng = np.random.default_rng(5)
    qw, _ = _case(4, 128, {}, 64, 512, 4, 5, "hlq")
    x = activations(rng, 4, 512, "outliers", 128)
    errs = {}
    for blk, c, r in ((128, False, 0), (128, True, 0), (32, True, 0), (16, True, 0), (32, True, 64), (16, True, 64),
                      (16, True, 8), (16, True, 2)):
        sched = Schedule.make(bits=4, group_size=128, lut_scale_block=blk, lut_centered=c, lut_scale_ratio=r)
        errs[blk, c, r] = int8_lookup_error(x, 128, sched).sum()
        y = lutc.compile(sched)(x, qw)
        ref, _ = reference(x, qw)
        err, bound = np.abs(y - ref), error_bound(x, qw, sched)
        assert (err <= bound).all() and err.max() > 0.02 * bound.max(), (sched, err.max(), bound.max())
    assert errs[128, True, 0] < errs[128, False, 0] and errs[16, True, 0] < errs[32, True, 0] < errs[128, True, 0]
    # integer ratios: the ratio grid rounds block scales up, less so with a larger R; with the
    # default R (64, the budget binds) close to float block scales even with outlier channels
    assert errs[16, True, 0] < errs[16, True, 64] < errs[16, True, 8] < errs[16, True, 2] < errs[128, True, 0]
    assert errs[16, True, 64] < 1.1 * errs[16, True, 0] and errs[32, True, 64] < 1.1 * errs[32, True, 0]


@pytest.mark.parametrize("xkind", XKINDS)
@pytest.mark.parametrize("target", ["host", "x86-avx2"])
def test_hard_activations_every_scale_block(xkind, target):
    """Outlier channels (100x), exact zeros and same-sign groups, for each scale block and both
    table forms, on the host and (where the host can run it) the named AVX2 target."""
    from lutc.backend.target import get_target
    from lutc.backend.toolchain import runs_here
    if target != "host" and not runs_here(get_target(target)):
        pytest.skip(f"this CPU lacks features of {target}")
    rng = np.random.default_rng(3)
    qw, _ = _case(2, 64, {}, 45, 200, 3, 3, "hlq")
    x = activations(rng, 3, 200, xkind, 64)
    ref, _ = reference(x, qw)
    for blk in (16, 32, 64):
        for centered in (True, False):
            for ratio in (0, 16):
                sched = Schedule.make(bits=2, group_size=64, lut_scale_block=blk, lut_centered=centered, unroll=2,
                                      lut_scale_ratio=ratio, lut_pair=(blk + ratio) % 32 == 16 or centered,
                                      lut_fine_planes=(blk // 16 + ratio) % 3)
                y = lutc.compile(sched, target=target)(x, qw, threads=2)
                assert (np.abs(y - ref) <= error_bound(x, qw, sched)).all(), (xkind, sched)


@pytest.mark.parametrize("bits,gs,blk", [(4, 128, 16), (4, 128, 8), (2, 64, 16), (3, 256, 32)])
@pytest.mark.parametrize("outlier", [False, True])
def test_integer_ratios_stay_in_int16_range(bits, gs, blk, outlier):
    """The worst case for the int16 group sums of integer block ratios: every lookup hits its
    table's largest entry (all-ones codes, same-sign activations), with and without one block
    100x larger (large r there, r = 1 elsewhere). An overflow would wrap and miss the bound."""
    K, N = 2 * gs, 40
    x = np.ones((2, K), np.float32)
    x[1] = -1.0
    if outlier:
        x[:, 3 * blk:4 * blk] *= 100.0
    codes = np.full((N, K), (1 << bits) - 1, np.uint8)
    scales = np.ones((bits, N, K // gs), np.float16)
    qw = quant.QuantizedTensor(bits, gs, (N, K), codes, scales, np.zeros((N, K // gs), np.float16))
    ref, _ = reference(x, qw)
    for pair in (True, False):      # pair_madd saturates at int16: it must never need to
        sched = Schedule.make(bits=bits, group_size=gs, lut_scale_block=blk, lut_scale_ratio=64, lut_pair=pair)
        assert sched.scale_ratio == 64 and sched.acc_dtype == "int16"
        y = lutc.compile(sched)(x, qw)
        assert (np.abs(y - ref) <= error_bound(x, qw, sched)).all()


@settings(max_examples=25, deadline=None)
@given(problems())
def test_pair_sums_are_bit_identical_to_single_lookups(p):
    """tl.pair_madd sums the same integers as widening each lookup and multiplying per block, and
    the pair order is undone before the float sums: both int8 paths give bit-identical y."""
    bits, gs, knobs, N, K, M, seed, method, xkind = p
    knobs = dict(knobs, lut_dtype="int8")
    qw, x = _case(*p)
    ys = [lutc.compile(Schedule.make(bits=bits, group_size=gs, **dict(knobs, lut_pair=pair)))(x, qw)
          for pair in (True, False)]
    np.testing.assert_array_equal(ys[0], ys[1])


def test_paired_kernels_stay_in_256_bit_registers():
    """On a 512-bit x86 target, paired kernels of 32-row tiles are compiled for 256-bit registers
    (spec.gemm_target); the unpaired ones and the default 64-row pairs keep zmm."""
    from lutc.backend.target import get_target
    from lutc.kernels import spec
    t = get_target("x86-avx512")
    s = Schedule.make(bits=2, group_size=64, lut_pair=True)
    assert s.paired and spec.gemm_target(s, t).vector_bits == 256
    assert spec.gemm_target(s.replace(lut_pair=False), t) is t
    assert spec.gemm_target(s, "x86-avx2") == "x86-avx2" and spec.gemm_target(s.replace(bn=64), t) is t
    asm = lutc.compile(s, target=t).emit("asm")
    assert "zmm" not in asm and "vpmaddubsw" in asm
    assert "zmm" in lutc.compile(s.replace(lut_pair=False), target=t).emit("asm")
    from lutc.ops import default_schedule           # the AVX-512 default: 64-row tiles pair in zmm
    d = default_schedule(2, 64, 1, t)
    assert d.paired and d.bn == 64 and spec.gemm_target(d, t) is t
    assert re.search(r"vpmaddubsw\s+.*zmm", lutc.compile(d, target=t).emit("asm"))


@pytest.mark.parametrize("xkind", XKINDS)
def test_fine_planes_cut_the_top_planes_error(xkind):
    """lut_fine_planes: the refined planes' table error is 1/16 of the int8 step's, by the
    independent bound (tests/kernel_reference.py), and the kernel's measured error falls with each
    refined plane (W4: the top plane carries most of the int8 error, docs/quantization.md)."""
    rng = np.random.default_rng(11)
    qw, _ = _case(4, 128, {}, 96, 512, 4, 11, "hlq")
    x = activations(rng, 4, 512, xkind, 128)
    ref, _ = reference(x, qw)
    errs = []
    for fine in range(5):
        for pair in (True, False):
            sched = Schedule.make(bits=4, group_size=128, lut_fine_planes=fine, lut_pair=pair)
            assert sched.fine_planes == fine
            y = lutc.compile(sched)(x, qw, threads=2)
            err = np.abs(y - ref)
            assert (err <= error_bound(x, qw, sched)).all(), (xkind, sched)
        errs.append(np.sqrt((err ** 2).mean()))
    if xkind != "zeros" or errs[0] > 0:
        assert errs[0] > errs[1] > errs[2] and errs[4] < 0.2 * errs[0], errs


def test_fine_planes_schedule_rules():
    """Refinement needs int8 tables (float tables ignore it); it adds a second table set and leaves
    the accumulator type alone (residuals are <= 8, the plane's own lookups <= 127)."""
    s = Schedule.make(bits=4, group_size=128, lut_fine_planes=1)
    assert s.fine_planes == 1 and s.table_sets == 2 and s.acc_dtype == "int16"
    # untuned defaults: W4 on pair-sum lookups takes block 8, integer ratios, the top 2 planes refined
    d = Schedule.make(bits=4, group_size=128, lut_pair=True)
    assert (d.lut_scale_block, d.scale_ratio, d.fine_planes, d.unroll) == (8, 64, 2, 1)
    d = Schedule.make(bits=4, group_size=128)
    assert (d.lut_scale_block, d.scale_ratio, d.fine_planes) == (32, 0, 0)
    d = Schedule.make(bits=2, group_size=64, lut_pair=True)
    assert (d.lut_scale_block, d.scale_ratio, d.fine_planes) == (16, 64, 0)
    assert Schedule.make(bits=2, group_size=64, lut_fine_planes=2).fine_planes == 2     # integer ratios too
    assert Schedule.make(bits=4, group_size=128, lut_fine_planes=2, lut_dtype="float16").table_sets == 1
    with pytest.raises(ValueError, match="lut_fine_planes"):
        Schedule.make(bits=2, group_size=64, lut_fine_planes=3)


@pytest.mark.parametrize("blk,ratio", [(32, 0), (64, 0), (8, 64), (16, 64)])
@pytest.mark.parametrize("pair", [True, False])
def test_fine_planes_stay_in_int16_range(blk, ratio, pair):
    """The worst case for refined int16 sums: every lookup hits its table's largest entry
    (all-ones codes, same-sign activations), every plane refined, with and without one block 100x
    larger (integer ratios: a large r there). An overflow would wrap and miss the bound."""
    K, N, gs = 256, 40, 128
    codes = np.full((N, K), 15, np.uint8)
    scales = np.ones((4, N, K // gs), np.float16)
    qw = quant.QuantizedTensor(4, gs, (N, K), codes, scales, np.zeros((N, K // gs), np.float16))
    for outlier in (False, True):
        x = np.ones((2, K), np.float32)
        x[1] = -1.0
        if outlier:
            x[:, 3 * blk:4 * blk] *= 100.0
        x[:, 1::7] *= 0.37            # residuals away from zero
        ref, _ = reference(x, qw)
        sched = Schedule.make(bits=4, group_size=gs, lut_scale_block=blk, lut_scale_ratio=ratio, lut_fine_planes=4,
                              lut_pair=pair)
        assert sched.acc_dtype == "int16" and sched.scale_ratio == ratio
        y = lutc.compile(sched)(x, qw)
        assert (np.abs(y - ref) <= error_bound(x, qw, sched)).all(), (outlier, sched)
