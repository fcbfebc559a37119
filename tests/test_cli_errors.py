"""Issue 13 finding 12 (and issue 12): every CLI mistake is one line on stderr naming the problem,
exit code 2, no traceback; one error reporter for all subcommands."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lutc(*args, timeout=180):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "lutc.cli", *args], capture_output=True, timeout=timeout,
                          env=env, cwd=str(ROOT))


def assert_one_line_error(r, *needles):
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, (r.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert re.match(r"lutc [a-z ]+: error: ", lines[0]), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def token_file(tmp_path):
    p = tmp_path / "token"
    p.write_text("0123456789abcdef0123456789abcdef\n")
    p.chmod(0o600)
    return p


def test_compile_to_a_missing_directory():
    assert_one_line_error(lutc("compile", "--bits", "2", "-o", "/missing/dir/k.s"), "/missing/dir", "does not exist")


def test_runner_on_an_address_not_on_this_machine(token_file):
    # 192.0.2.1 (TEST-NET-1) is not assigned here: binding fails; nothing is sent anywhere
    assert_one_line_error(lutc("runner", "--listen", "192.0.2.1:7070", "--token-file", str(token_file)),
                          "cannot listen on 192.0.2.1:7070")


@pytest.mark.parametrize("args,needle", [(("--threads", "-1"), "--threads must be >= 1"),
                                         (("--n", "0"), "--n must be in 1..65536"),
                                         (("--k", "-5"), "--k must be in 1..65536"),
                                         (("--bits", "9"), "--bits must be in 1..4")])
def test_demo_bad_sizes(args, needle):
    assert_one_line_error(lutc("demo", *args), needle)


def test_tune_with_a_bogus_storage_url(tmp_path):
    assert_one_line_error(lutc("tune", "--shapes", "64x256", "--bits", "2", "--m", "1", "--trials", "1",
                               "--storage", "bogus://x", "--db", str(tmp_path)), "--storage 'bogus://x'")


def test_tune_with_an_unwritable_db_fails_before_tuning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    t0 = time.monotonic()
    r = lutc("tune", "--shapes", "64x256", "--bits", "2", "--m", "1", "--trials", "2", "--repeats", "2",
             "--final-rounds", "1", "--cache", "hot", "--quiet", "--storage", f"sqlite:///{tmp_path}/s.db",
             "--db", str(blocker / "db"), timeout=120)
    assert_one_line_error(r, "--db", "cannot write")
    assert "trials (" not in r.stderr.decode() and time.monotonic() - t0 < 60   # no study ran


def test_estimate_with_an_unwritable_db(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_one_line_error(lutc("tune", "--estimate", "--target", "m2", "--shapes", "64x256", "--bits", "2",
                               "--m", "1", "--db", str(blocker / "db")), "--db", "cannot write")


def test_generate_ctx_zero():
    assert_one_line_error(lutc("generate", "smollm2-135m", "--prompt", "hi", "--ctx", "0"), "--ctx must be >= 1")


def test_generate_prompt_that_is_not_utf8():
    r = subprocess.run([sys.executable.encode(), b"-m", b"lutc.cli", b"generate", b"smollm2-135m", b"--prompt",
                        b"caf\xe9 \xff"], capture_output=True, timeout=180,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
    assert_one_line_error(r, "--prompt is not valid UTF-8")


def test_demo_returns_nonzero_when_the_kernel_is_wrong(monkeypatch, capsys):
    from lutc.demo import run_demo
    from lutc.kernels.compiled import CompiledKernel
    real = CompiledKernel.__call__

    def wrong(self, x, qw, *a, **k):
        return -real(self, x, qw, *a, **k) + 3.0   # a badly wrong kernel
    monkeypatch.setattr(CompiledKernel, "__call__", wrong)
    assert run_demo(bits=2, n=64, k=256, threads=1) == 1
    assert "lutc demo: error: the kernel's output is wrong" in capsys.readouterr().err


def test_demo_succeeds(capsys):
    from lutc.cli import main
    assert main(["demo", "--n", "64", "--k", "256", "--threads", "1"]) == 0


def test_one_error_reporter_for_every_cli():
    """Issue 12: no CLI module has its own _fail; they raise UsageError (quant: USER_ERRORS)."""
    for mod in ("lutc/cli.py", "lutc/tuning/cli.py", "lutc/remote/cli.py", "quant/cli.py", "runtime/cli.py"):
        assert "def _fail" not in (ROOT / mod).read_text(), mod
    assert not re.search(r"^\s*(import lutc|from lutc)", (ROOT / "quant/cli.py").read_text(), re.M)


def test_usage_errors_in_process(capsys, tmp_path):
    from lutc.cli import main
    assert main(["compile", "--bits", "2", "--set", "nonsense"]) == 2
    assert capsys.readouterr().err.strip() == "lutc compile: error: --set expects knob=value, got 'nonsense'"
    assert main(["eval", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lutc eval: error: ") and err.count("\n") == 1
