"""The examples run and check themselves."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_custom_kernel_example():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_kernel.py")],
                         capture_output=True, text=True, check=True).stdout
    assert "max |lutc - numpy|" in out


def test_int8_matmul_example():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "int8_matmul.py")],
                         capture_output=True, text=True, check=True).stdout
    assert "matches numpy" in out
