"""AArch64 NEON kernels proven correct here: compiled for m2's cpu/features and aarch64-linux,
linked with tests/aarch64_harness/harness.c, run under qemu-aarch64, checked against numpy."""
import os

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import quant
from aarch64_harness import emulate
from kernel_reference import error_bound, reference
from lutc.backend.target import get_target, linux_twin
from lutc.kernels import pack_weights, spec
from lutc import Schedule
from lutc.kernels.compiled import CompiledKernel
from test_kernels import XKINDS, activations, problems

# (target, qemu cpu model): m2's exact cpu and features as ELF under the most capable emulated
# CPU, and the generic armv8.2-a target on qemu's Cortex-A76 (the Raspberry Pi 5's core), which
# faults on any instruction beyond that core's features.
M2_ELF = (linux_twin("m2"), "max")
A76 = (get_target("aarch64-linux"), "cortex-a76")
_COST_CAP = 4 * 2 * 4 * 64  # bits * mb * unroll * bn: keeps each compile near a second


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    why = emulate.missing_tools()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"emulated AArch64 tests cannot run in CI: {why}")
        pytest.skip(why)
    return tmp_path_factory.mktemp("aarch64")


_EXES = {}


def _emulated(workdir, target_cpu, sched, x, qw):
    target, cpu = target_cpu
    kernel = CompiledKernel(sched, target)
    key = (target.key, sched.codegen_key)
    if key not in _EXES:
        _EXES[key] = emulate.build(kernel, workdir / f"k{len(_EXES)}")
    run_dir = _EXES[key].parent
    return emulate.lut_gemm_emulated(kernel, _EXES[key], x, pack_weights(qw, sched), run_dir, cpu)


def _problem(bits, gs, N, K, M, seed, method="hlq"):
    rng = np.random.default_rng(seed)
    qw = quant.quantize(rng.standard_normal((N, K)).astype(np.float32), bits, gs, method=method, rounds=3)
    return qw, rng.standard_normal((M, K)).astype(np.float32)


def _check(y, x, qw, sched, label):
    ref, _ = reference(x, qw)
    assert y.shape == ref.shape and np.isfinite(y).all(), label
    err = np.abs(y.astype(np.float64) - ref)
    bound = error_bound(x, qw, sched)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), f"{label} {sched}: err {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


@pytest.mark.parametrize("lut_dtype", ["int8", "float16", "float32"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_m2_code_matches_reference_under_qemu(workdir, bits, lut_dtype):
    """Every bit width and table precision on a ragged shape: N, K not multiples of tile or group."""
    qw, x = _problem(bits, 64, 77, 201, 7, bits)
    sched = Schedule.make(bits=bits, group_size=64, lut_dtype=lut_dtype)
    _check(_emulated(workdir, M2_ELF, sched, x, qw), x, qw, sched, "m2 (ELF, qemu max)")


@pytest.mark.parametrize("knobs", [dict(lut_dtype="int8", g=2, bn=16, lut_pair=True), dict(lut_dtype="int8", bn=64, mb=2),
                                   dict(lut_dtype="int8", g=3, bn=128, mb=2, lut_pair=True), dict(lut_dtype="float16", g=3, mb=2),
                                   dict(lut_dtype="float32", interleave="plane", unroll=1),
                                   dict(lut_dtype="int8", prefetch=4),
                                   dict(lut_dtype="int8", lut_scale_ratio=0, lut_fine_planes=1, lut_pair=True),
                                   dict(lut_dtype="int8", g=3, lut_scale_ratio=0, lut_fine_planes=2, mb=2)])
@pytest.mark.parametrize("bits", [2, 4])
def test_aarch64_linux_on_cortex_a76(workdir, bits, knobs):
    qw, x = _problem(bits, 32, 50, 97, 3, 10 + bits, "rtn")
    sched = Schedule.make(bits=bits, group_size=32, **knobs)
    _check(_emulated(workdir, A76, sched, x, qw), x, qw, sched, "aarch64-linux (qemu cortex-a76)")


@settings(max_examples=8, deadline=None)
@given(problems())
def test_property_cases_under_qemu(workdir, p):
    """The host property tests' problem space (test_kernels.problems), run as AArch64 code."""
    bits, gs, knobs, N, K, M, seed, method, xkind = p
    assume(bits * knobs["mb"] * knobs["unroll"] * knobs["bn"] <= _COST_CAP)
    qw, _ = _problem(bits, gs, N, K, M, seed, method)
    x = activations(np.random.default_rng(seed + 1), M, K, xkind, gs)
    sched = Schedule.make(bits=bits, group_size=gs, **knobs)
    target_cpu = M2_ELF if seed % 2 else A76
    _check(_emulated(workdir, target_cpu, sched, x, qw), x, qw, sched, target_cpu[0].name)


@pytest.mark.parametrize("xkind", XKINDS)
def test_hard_activations_every_scale_block_under_qemu(workdir, xkind):
    """Outlier channels (100x), exact zeros, same-sign groups: centered and raw int8 tables at
    each scale block, float and integer block scales, as Cortex-A76 NEON code (tbl) under qemu."""
    qw, _ = _problem(2, 64, 45, 200, 3, 3)
    x = activations(np.random.default_rng(3), 3, 200, xkind, 64)
    for blk, centered, ratio, pair, fine in ((16, True, 16, True, 0), (16, True, 16, False, 0), (16, True, 0, True, 1),
                                             (32, True, 8, True, 0), (32, False, 0, False, 2), (64, False, 0, True, 0),
                                             (32, True, 0, True, 2)):
        sched = Schedule.make(bits=2, group_size=64, lut_scale_block=blk, lut_centered=centered, unroll=2,
                              lut_scale_ratio=ratio, lut_pair=pair, lut_fine_planes=fine)
        _check(_emulated(workdir, A76, sched, x, qw), x, qw, sched, f"aarch64-linux {xkind}")


def test_harness_catches_wrong_results_and_overflows(workdir):
    """The harness is not vacuous: a dropped bit-plane fails the bound; a short y is reported."""
    qw, x = _problem(2, 64, 40, 128, 2, 3, "rtn")
    sched = Schedule.make(bits=2, group_size=64)
    wrong = quant.QuantizedTensor(2, 64, qw.shape, qw.codes & 1, qw.scales, qw.zeros)
    y = _emulated(workdir, A76, sched, x, wrong)
    with pytest.raises(AssertionError, match="err"):
        _check(y, x, qw, sched, "dropped plane")
    kernel = CompiledKernel(sched, A76[0])
    exe = _EXES[(A76[0].key, sched.codegen_key)]
    packed = pack_weights(qw, sched)
    plan = emulate.Plan(exe.parent)
    bx, bw, bsz = plan.input(x), plan.input(packed.w), plan.input(packed.sz)
    luts = plan.scratch(2 * 2 * sched.padded_tables * 16)
    nscales = spec.scratch_sizes(sched, 2, 2)["lut_scales"]     # M=2 rows, 2 groups, NS slots each
    scales, sums, y = plan.scratch(4 * nscales), plan.scratch(16), plan.scratch(2 * 40 * 4 - 4)  # one float short
    plan.launch(kernel.tables, (2, 2), [bx, luts, scales, sums, 128, 2])
    plan.launch(kernel.gemm, (packed.num_tiles,), [bw, bsz, luts, scales, sums, y, 2, 40, 2])
    with pytest.raises(RuntimeError, match="out-of-bounds write around buffer 6"):
        emulate.run(exe, plan, "cortex-a76")


# -- tl.dot: sdot (dotprod), smmla/usmmla and usdot (i8mm), the XOR-0x80 fix for u8 A without
# i8mm; bit-exact against numpy
def _i8mm(target):
    import dataclasses
    return dataclasses.replace(target, name=target.name + "+i8mm", features=target.features + ",+i8mm")


_DOT_EXES = {}


def _dot_emulated(workdir, target, cpu, A, B, tile=(4, 16, 32)):
    from test_dot import _SIG, tile_dot
    a_t = "*u8" if A.dtype == np.uint8 else "*i8"
    b_t = "*u8" if B.dtype == np.uint8 else "*i8"
    key = (target.key, a_t, b_t, tile)
    if key not in _DOT_EXES:
        BM, BN, BK = tile
        fn = tile_dot.compile({"a": a_t, **_SIG, "b": b_t}, dict(BM=BM, BN=BN, BK=BK, CLAMP=0), 2, target)
        _DOT_EXES[key] = (fn, emulate.build_functions([fn], workdir / f"dot{len(_DOT_EXES)}"))
    fn, exe = _DOT_EXES[key]
    (M, K), N = A.shape, B.shape[1]
    run_dir = exe.parent / f"run{M}x{N}x{K}"
    run_dir.mkdir(exist_ok=True)
    plan = emulate.Plan(run_dir)
    ba, bb, bc = plan.input(A), plan.input(B), plan.scratch(M * N * 4)
    plan.launch(fn, (-(-M // tile[0]), -(-N // tile[1])), [ba, bb, bc, M, N, K])
    plan.output(bc, np.int32, (M, N))
    return emulate.run(exe, plan, cpu)[0]


@pytest.mark.parametrize("adt", [np.uint8, np.int8])
@pytest.mark.parametrize("target_cpu", [A76, (_i8mm(get_target("aarch64-linux")), "max"), M2_ELF],
                         ids=["a76-sdot", "i8mm-mmla", "m2"])
def test_dot_exact_under_qemu(workdir, target_cpu, adt):
    from test_dot import _edge_matrix, _ref
    target, cpu = target_cpu
    rng = np.random.default_rng(7)
    info = np.iinfo(adt)
    cases = [(np.full((5, 70), info.max, adt), np.full((70, 19), -128, np.int8)),
             (np.full((5, 70), info.min, adt), np.full((70, 19), -128, np.int8))]
    for M, N, K in ((1, 1, 1), (3, 17, 33), (9, 31, 100)):
        cases.append((_edge_matrix(rng, (M, K), adt), _edge_matrix(rng, (K, N), np.int8)))
    # (4, 16, 32) tiles; ragged (3, 5, 7) tiles (odd rows and columns for the 2 x 2 mmla tiles);
    # single-row (1, 16, 32) tiles, which use sdot/usdot even with i8mm
    tiles = [(4, 16, 32)] + ([(3, 5, 7), (1, 16, 32)] if target.has("i8mm") else [])
    for tile in tiles:
        for A, B in cases:
            C = _dot_emulated(workdir, target, cpu, A, B, tile)
            np.testing.assert_array_equal(C, _ref(A, B), err_msg=f"{target.name} {tile} {A.shape}x{B.shape}")


@pytest.mark.parametrize("target_cpu", [A76, (_i8mm(get_target("aarch64-linux")), "max"), M2_ELF],
                         ids=["a76-sdot", "i8mm-mmla", "m2"])
def test_signed_a_unsigned_b_under_qemu(workdir, target_cpu):
    """i8 x u8 (sdot with B XOR 0x80 and a per-row fix; usmmla / usdot with B as the unsigned
    operand): corners -128/127 x 0/255 and ragged shapes, bit-exact."""
    from test_dot import _edge_matrix, _ref
    target, cpu = target_cpu
    rng = np.random.default_rng(8)
    cases = [(np.full((5, 70), a, np.int8), np.full((70, 19), b, np.uint8)) for a in (-128, 127) for b in (0, 255)]
    for M, N, K in ((1, 1, 1), (3, 17, 33), (9, 31, 100)):
        cases.append((_edge_matrix(rng, (M, K), np.int8), _edge_matrix(rng, (K, N), np.uint8)))
    tiles = [(4, 16, 32)] + ([(3, 5, 7), (1, 16, 32)] if target.has("i8mm") else [])
    for tile in tiles:
        for A, B in cases:
            C = _dot_emulated(workdir, target, cpu, A, B, tile)
            np.testing.assert_array_equal(C, _ref(A, B), err_msg=f"{target.name} {tile} {A.shape}x{B.shape}")


@settings(max_examples=6, deadline=None)
@given(M=st.integers(1, 12), N=st.integers(1, 40), K=st.integers(1, 100), seed=st.integers(0, 2**31),
       signed=st.booleans(), i8mm=st.booleans())
def test_dot_property_under_qemu(workdir, M, N, K, seed, signed, i8mm):
    from test_dot import _edge_matrix, _ref
    target, cpu = (_i8mm(get_target("aarch64-linux")), "max") if i8mm else A76
    rng = np.random.default_rng(seed)
    adt = np.int8 if signed else np.uint8
    A, B = _edge_matrix(rng, (M, K), adt), _edge_matrix(rng, (K, N), np.int8)
    np.testing.assert_array_equal(_dot_emulated(workdir, target, cpu, A, B), _ref(A, B))


@pytest.mark.parametrize("target_cpu", [A76, (_i8mm(get_target("aarch64-linux")), "max")], ids=["a76", "i8mm"])
@pytest.mark.parametrize("residual", [False, True])
def test_dot_path_under_qemu(workdir, target_cpu, residual):
    """The dot path (lutc/kernels/dotgemm.py: u8 levels decoded from the packed planes, then
    tl.dot(i8 activations, u8 levels): sdot with the XOR fix, or usmmla with i8mm) as AArch64
    code, against its numpy reference; negative plane scales included; the default 8 x 16 blocks
    and the former 16 x 8."""
    from kernel_reference import dot_reference
    from lutc.kernels.dotgemm import level_max
    from test_dotgemm import signed_qt
    target, cpu = target_cpu
    assert level_max(target) == 255
    rng = np.random.default_rng(11)
    M, N, K = 18, 37, 200
    qw = signed_qt(rng, 3, 64, N, K)
    x = activations(rng, M, K, "outliers", 64)
    for bm, ns in ((8, 16), (16, 8)):
        sched = Schedule(bits=3, group_size=64, path="dot", dot_bm=bm, dot_ns=ns, act_block=32, act_residual=residual)
        kernel = CompiledKernel(sched, target)
        exe = emulate.build_functions([kernel.tables, kernel.gemm], workdir / f"dot_{target.name}_{residual}_{bm}")
        y = emulate.lut_gemm_emulated(kernel, exe, x, pack_weights(qw, sched), exe.parent, cpu)
        ref, mag = dot_reference(x, qw, 32, 255, residual)
        assert np.isfinite(y).all()
        assert (np.abs(y - ref) <= 2e-6 * (qw.num_groups + 8) * mag).all(), (bm, ns)
