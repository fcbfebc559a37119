"""Liveness bounds for tests: generous, and a bound that fires names the machine's load.

Tests pin behaviour, not speed (timing belongs in bench/). A wall-clock bound in a test is only
there so a hang fails instead of blocking the run; it is far above the normal time even on a
loaded 2-core machine, and the failure says how loaded the machine was."""
import os
import time

LIVENESS_S = 120.0


def load_note() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min) on {os.cpu_count()} cpus"


def wait_until(predicate, what: str, timeout: float = LIVENESS_S, poll: float = 0.01):
    """Poll until predicate() is true; past `timeout` seconds fail naming `what` and the load."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within the {timeout:g}s liveness bound ({load_note()})")
        time.sleep(poll)


def run_live(cmd, timeout: float = LIVENESS_S, **kw):
    """subprocess.run(cmd, capture_output=True, text=True) within the liveness bound; past it,
    fail naming the command and the load instead of raising TimeoutExpired."""
    import subprocess
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{' '.join(map(str, cmd))}: not done within the {timeout:g}s liveness "
                             f"bound ({load_note()})") from None
