"""The lutc command line: compile --emit ir|llvm|asm|obj, targets, errors."""
import subprocess
import sys

import pytest


def lutc_cli(*args, check=True):
    return subprocess.run([sys.executable, "-m", "lutc.cli", *args], capture_output=True, text=True,
                          check=check)


@pytest.mark.parametrize("emit,marker", [("ir", "func @lut_gemm("), ("llvm", "define void @lut_gemm_launch"),
                                         ("asm", "lut_gemm_launch")])
def test_compile_emits_to_stdout(emit, marker):
    out = lutc_cli("compile", "--emit", emit, "--bits", "2", "--group-size", "64", "--set", "bn=16").stdout
    assert marker in out
    assert '"bn": 16' in out


def test_compile_writes_files_and_objects(tmp_path):
    asm = tmp_path / "k.s"
    lutc_cli("compile", "--target", "aarch64-linux", "--emit", "asm", "--bits", "3", "-o", str(asm))
    assert "tbl" in asm.read_text()
    obj = tmp_path / "k.o"
    lutc_cli("compile", "--target", "x86-avx2", "--emit", "obj", "--bits", "4", "-o", str(obj))
    assert obj.read_bytes()[:4] == b"\x7fELF"
    assert (tmp_path / "k.tables.o").read_bytes()[:4] == b"\x7fELF"


def test_compile_reports_bad_knobs():
    r = lutc_cli("compile", "--bits", "2", "--set", "lut_dtype=bf16", check=False)
    assert r.returncode != 0 and "lut_dtype must be one of" in r.stderr
    r = lutc_cli("compile", "--bits", "2", "--target", "vax", check=False)
    assert r.returncode != 0 and "unknown target 'vax'" in r.stderr


def test_targets_lists_registry():
    out = lutc_cli("targets").stdout
    for name in ("host", "m2", "aarch64-linux", "x86-avx2", "x86-avx512"):
        assert name in out
