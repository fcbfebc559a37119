"""Target registry, cross compilation to Mach-O/ELF for any schedule, and native-only refusals."""
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lutc
import quant
from lutc.backend.aot import ALLOWED_IMPORTS, ObjectFormatError, check_object, inspect_object
from lutc.backend.target import (NativeOnlyError, Target, get_target, linux_twin, native_mismatch, runnable,
                                 target_names)
from lutc import Schedule
from lutc.kernels.compiled import CompiledKernel
from lutc.schedule import KNOB_CHOICES
from test_asm import _loop_bodies

HOST = get_target("host")


def test_registry_is_a_capability_table():
    assert set(target_names()) >= {"host", "m2", "aarch64-linux", "x86-avx2", "x86-avx512", "generic-x86"}
    m2, a64 = get_target("m2"), get_target("aarch64-linux")
    assert (m2.triple, m2.cpu, m2.object_format, m2.byte_shuffle) == \
        ("arm64-apple-macosx13.0.0", "apple-m2", "macho", "tbl")
    assert all(m2.has(f) for f in ("neon", "dotprod", "fullfp16"))
    assert (a64.triple, a64.object_format, a64.byte_shuffle, a64.vector_bits) == \
        ("aarch64-unknown-linux-gnu", "elf", "tbl", 128)
    assert all(a64.has(f) for f in ("neon", "v8.2a", "dotprod", "fullfp16"))
    for name, width in (("x86-avx2", 32), ("x86-avx512", 64)):
        t = get_target(name)
        assert t.byte_shuffle == "pshufb" and t.shuffle_bytes_width == width and t.object_format == "elf"
    assert get_target("generic-x86").byte_shuffle is None


def test_target_roundtrip_and_keys():
    m2 = get_target("m2")
    assert Target.from_dict(m2.to_dict()) == m2
    assert not Target.from_dict(HOST.to_dict()).is_host  # a description never claims to be this machine
    with pytest.raises(ValueError, match="byte_shuffle"):
        Target.from_dict({**m2.to_dict(), "byte_shuffle": "vperm"})
    # loaded (native) and cross-compiled code never share an in-memory cache entry
    assert HOST.key.endswith("|native") and not m2.key.endswith("|native")


def test_linux_twin_keeps_cpu_and_features():
    twin = linux_twin("m2")
    m2 = get_target("m2")
    assert (twin.cpu, twin.features, twin.object_format) == (m2.cpu, m2.features, "elf")
    assert twin.triple == "aarch64-unknown-linux-gnu"
    assert linux_twin("aarch64-linux") is get_target("aarch64-linux")


def test_native_only_features_fail_clearly_on_other_targets():
    other = "m2" if HOST.is_x86 else "x86-avx2"
    assert native_mismatch(get_target("host")) is None
    with pytest.raises(NativeOnlyError, match=rf"cannot run {other} code on this machine.*lutc runner"):
        runnable(other)
    qw = quant.quantize(np.ones((4, 32), np.float32), 2, 32, method="rtn")
    k = CompiledKernel(Schedule.make(bits=2, group_size=32), other)
    with pytest.raises(lutc.LaunchError, match=f"compiled for {other}"):
        k(np.ones((1, 32), np.float32), qw)


@pytest.mark.parametrize("name", ["x86-avx2", "x86-avx512", "generic-x86"])
def test_compatible_named_target_runs_on_this_host(name):
    if native_mismatch(get_target(name)) is not None:
        pytest.skip(f"{name} cannot run here: {native_mismatch(get_target(name))}")
    qw = quant.quantize(np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32), 2, 32)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    sched = Schedule.make(bits=2, group_size=32)
    CompiledKernel(sched, name)  # a cross-compile of the same code first: must not be reused
    y = CompiledKernel(sched, runnable(name))(x, qw)
    np.testing.assert_allclose(y, lutc.compile(sched)(x, qw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,fmt,arch", [("m2", "macho", "aarch64"), ("aarch64-linux", "elf", "aarch64"),
                                           ("x86-avx2", "elf", "x86_64"), ("x86-avx512", "elf", "x86_64"),
                                           ("generic-x86", "elf", "x86_64")])
@pytest.mark.parametrize("lut_dtype", ["int8", "float16"])
def test_objects_have_the_target_format_and_only_allowed_imports(name, fmt, arch, lut_dtype):
    k = CompiledKernel(Schedule.make(bits=3, group_size=64, lut_dtype=lut_dtype), name)
    for fn in (k.tables, k.gemm):
        info = check_object(fn.obj, get_target(name), exports=(f"{fn.name}_launch",))
        assert (info.format, info.arch) == (fmt, arch)
        assert "lutc_pool_run" in info.undefined and set(info.undefined) <= ALLOWED_IMPORTS


def test_check_object_rejects_the_wrong_format():
    k = CompiledKernel(Schedule.make(bits=2, group_size=64), "aarch64-linux")
    with pytest.raises(ObjectFormatError, match="expected a macho aarch64 object for target m2, got elf"):
        check_object(k.gemm.obj, get_target("m2"))
    with pytest.raises(ObjectFormatError, match="not a 64-bit"):
        inspect_object(b"#!/bin/sh\n")
    with pytest.raises(ObjectFormatError, match="truncated"):
        inspect_object(k.gemm.obj[:70])


# The largest unrolled schedules (bits=4, mb=4, unroll=8, bn=128) take ~30 s to compile twice;
# the property test draws from every knob but keeps the unrolled body small enough for CI.
_COST_CAP = 2 * 2 * 4 * 64


@settings(max_examples=6, deadline=None)
@given(bits=st.integers(1, 4), gs=st.sampled_from([32, 64, 128]),
       knobs=st.fixed_dictionaries({k: st.sampled_from(v) for k, v in KNOB_CHOICES.items()}))
def test_m2_compiles_any_schedule_with_tbl_in_the_inner_loop(bits, gs, knobs):
    assume(bits * knobs["mb"] * knobs["unroll"] * knobs["bn"] <= _COST_CAP)
    k = CompiledKernel(Schedule.make(bits=bits, group_size=gs, **knobs), "m2")
    asm = k.emit("asm")
    assert any(re.search(r"\btbl\b", body) for body in _loop_bodies(asm)), asm[:1500]
    assert inspect_object(k.gemm.obj).format == "macho"


def _cli(capsys, *args):
    """Run `lutc ...` in this process (a subprocess would pay for every plugin's imports again)."""
    from lutc.cli import main
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr()


@pytest.mark.parametrize("target,magic", [("m2", b"\xcf\xfa\xed\xfe"), ("aarch64-linux", b"\x7fELF")])
def test_cli_compile_obj_writes_macho_or_elf(tmp_path, capsys, target, magic):
    out = tmp_path / "k.o"
    r = _cli(capsys, "compile", "--target", target, "--emit", "obj", "--bits", "2", "--group-size", "32",
             "--set", "lut_dtype=float16", "--set", "g=2", "-o", str(out))
    assert out.read_bytes()[:4] == magic and (tmp_path / "k.tables.o").read_bytes()[:4] == magic
    assert "aarch64" in r.err and ("macho" if target == "m2" else "elf") in r.err
    asm = _cli(capsys, "compile", "--target", target, "--emit", "asm", "--bits", "1", "--set", "mb=4").out
    assert "tbl" in asm
    llvm = _cli(capsys, "compile", "--target", target, "--emit", "llvm", "--bits", "3").out
    assert f'target triple = "{get_target(target).triple}"' in llvm


def test_cli_targets_says_what_runs_here(capsys):
    lines = {ln.split()[0]: ln for ln in _cli(capsys, "targets").out.splitlines()}
    assert lines["host"].endswith("runs here")
    assert lines["m2"].endswith("compile only") == (native_mismatch(get_target("m2")) is not None)
    assert "macho" in lines["m2"] and "elf" in lines["aarch64-linux"]
