"""Device fingerprint: which machine a tuning db file describes, and its stable file name."""
from __future__ import annotations

import functools
import os
import re

from ..launcher import usable_cores  # noqa: F401  (re-exported: the tuner's cores follow the launcher's rule)


def _cpu_model() -> str:
    """The OS's marketing name of the CPU ('AMD EPYC'), or '' when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or ""


def _isa(target) -> str:
    """A short vector-ISA summary: 'avx512', 'avx2', 'neon', ... ."""
    if target.is_x86:
        for feat in ("avx512bw", "avx2", "ssse3"):
            if target.has(feat):
                return feat.replace("bw", "")
        return "sse2"
    if target.is_aarch64:
        return "neon"
    return "scalar"


_DEVICE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def device_id(fp: dict) -> str:
    """The stable name of a device: <arch>-<llvm cpu>-<cores>c, e.g. 'x86_64-znver4-2c'."""
    name = f"{fp['arch']}-{fp['cpu']}-{fp['cores']}c"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:128]


def check_device_id(dev) -> str:
    """`dev` if it is a usable device id (what names a db file, a study): 1-128 characters of
    [A-Za-z0-9_.-], not starting with '.' or '-'; ValueError otherwise. The one check for ids
    from anywhere: this host, a db file, a remote runner's hello."""
    if not isinstance(dev, str) or not _DEVICE_ID.fullmatch(dev):
        raise ValueError(f"invalid device id {dev!r}: expected 1-128 characters of letters, digits, '_', '.', "
                         "'-', not starting with '.' or '-'")
    return dev


@functools.lru_cache(maxsize=1)
def host_fingerprint() -> dict:
    """Fingerprint of this machine: ISA, cpu name, features and core count."""
    from ..backend.target import get_target
    t = get_target("host")
    fp = {
        "arch": t.arch,
        "triple": t.triple,
        "cpu": t.cpu,
        "cpu_model": _cpu_model(),
        "isa": _isa(t),
        "vector_bits": t.vector_bits,
        "byte_shuffle": t.byte_shuffle,
        "features": [f for f in t.features.split(",") if f.startswith("+")],
        "cores": os.cpu_count() or 1,
    }
    fp["id"] = device_id(fp)
    return fp


def host_device_id() -> str:
    return host_fingerprint()["id"]


