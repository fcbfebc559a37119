"""The compiled-object caches: keys cover every knob and the target; corrupt entries recompile."""
import os
import subprocess
import sys

import numpy as np

import lutc
import lutc.language as tl
from lutc.backend.target import get_target
from lutc.cache import DiskCache, atomic_write
from lutc.compiler import cache_key
from lutc.kernels import lut_gemm
from lutc import Schedule
from lutc.kernels.compiled import CompiledKernel


@lutc.jit
def scale_kernel(a, out, S: tl.constexpr):
    offs = tl.arange(0, 8)
    tl.store(out + offs, tl.load(a + offs) * S)


def test_key_covers_constexprs_types_target_and_source():
    sig = {"a": "*f32", "out": "*f32"}
    host = get_target("host")
    k = cache_key(scale_kernel, sig, {"S": 2.0}, 1, host)
    assert k == cache_key(scale_kernel, sig, {"S": 2.0}, 1, host)
    assert k != cache_key(scale_kernel, sig, {"S": 3.0}, 1, host)
    assert k != cache_key(scale_kernel, {"a": "*f16", "out": "*f32"}, {"S": 2.0}, 1, host)
    assert k != cache_key(scale_kernel, sig, {"S": 2.0}, 2, host)
    assert k != cache_key(scale_kernel, sig, {"S": 2.0}, 1, get_target("x86-avx2"))


def test_every_codegen_knob_changes_the_kernel_key():
    base = Schedule.make(bits=2, group_size=64)
    seen = set()
    for s in [base, base.replace(group_size=128), base.replace(g=3), base.replace(lut_dtype="float16"),
              base.replace(bn=64), base.replace(unroll=1), base.replace(mb=2),
              base.replace(interleave="plane"), base.replace(bits=3)]:
        k = CompiledKernel(s)
        key = cache_key(lut_gemm, k._sigs[1], k._cexprs[1], 1, get_target("host"))
        assert key not in seen, s
        seen.add(key)


def test_disk_cache_rejects_corrupt_and_truncated_entries(tmp_path):
    cache = DiskCache(tmp_path)
    cache.put("ab" * 32, b"object bytes")
    assert cache.get("ab" * 32) == b"object bytes"
    path = cache._path("ab" * 32)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    assert cache.get("ab" * 32) is None
    path.write_bytes(data[:-1] + b"X")
    assert cache.get("ab" * 32) is None
    path.write_bytes(b"garbage")
    assert cache.get("ab" * 32) is None
    assert cache.get("cd" * 32) is None


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write(tmp_path / "f.bin", b"1")
    atomic_write(tmp_path / "f.bin", b"2")
    assert (tmp_path / "f.bin").read_bytes() == b"2"
    assert os.listdir(tmp_path) == ["f.bin"]


_CHILD = r"""
import numpy as np, lutc, lutc.language as tl, os, sys
@lutc.jit
def twice(a, out):
    offs = tl.arange(0, 4)
    tl.store(out + offs, tl.load(a + offs) * 2.0)
a = np.arange(4, dtype=np.float32); out = np.zeros(4, np.float32)
twice[(1,)](a, out)
print(out.tolist())
"""


def test_corrupt_disk_entry_is_recompiled_in_a_fresh_process(tmp_path):
    env = {**os.environ, "LUTC_CACHE_DIR": str(tmp_path)}
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    run = lambda: subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                                 check=True).stdout.strip()
    assert run() == "[0.0, 2.0, 4.0, 6.0]"
    entries = list((tmp_path / "kernels").rglob("*.o"))
    assert len(entries) == 1
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncate the object
    assert run() == "[0.0, 2.0, 4.0, 6.0]"               # recompiled, not trusted
    assert len(entries[0].read_bytes()) > 100              # and rewritten


def test_memory_cache_returns_the_same_kernel():
    sig = {"a": "*f32", "out": "*f32"}
    assert scale_kernel.compile(sig, {"S": 1.5}) is scale_kernel.compile(sig, {"S": 1.5})
    a, out = np.arange(8, dtype=np.float32), np.zeros(8, np.float32)
    scale_kernel[(1,)](a, out, S=1.5)
    np.testing.assert_array_equal(out, a * 1.5)


def test_disk_hit_skips_the_frontend(monkeypatch):
    J = sys.modules["lutc.compiler"]  # the module (the package attribute `lutc.jit` is the decorator)
    sig = {"a": "*f32", "out": "*f32"}
    first = scale_kernel.compile(sig, {"S": 4.25})         # compiled and written to disk
    monkeypatch.setattr(J, "_MEMORY_CACHE", {})
    calls = []
    real_lower = J.lower
    monkeypatch.setattr(J, "lower", lambda *a, **k: calls.append(1) or real_lower(*a, **k))
    again = scale_kernel.compile(sig, {"S": 4.25})
    assert again is not first and again.obj == first.obj and calls == []
    assert "func @scale_kernel" in again.ir and calls == [1]   # the IR text is built on demand


def test_key_covers_the_compiler_source(monkeypatch):
    J = sys.modules["lutc.compiler"]
    h = J.compiler_hash()
    J.compiler_hash.cache_clear()
    assert J.compiler_hash() == h  # stable for unchanged sources
    sig, host = {"a": "*f32", "out": "*f32"}, get_target("host")
    before = cache_key(scale_kernel, sig, {"S": 2.0}, 1, host)
    monkeypatch.setattr(J, "compiler_hash", lambda: "another compiler")
    assert cache_key(scale_kernel, sig, {"S": 2.0}, 1, host) != before


_EDITABLE = r"""
import numpy as np, lutc, lutc.language as tl
FACTOR = {factor}

@lutc.jit
def helper(v):
    return v + {bias}

@lutc.jit
def k(a, out):
    offs = tl.arange(0, 4)
    tl.store(out + offs, helper(tl.load(a + offs) * FACTOR) * {scale})

a = np.arange(4, dtype=np.float32); out = np.zeros(4, np.float32)
k[(1,)](a, out)
print(out.tolist())
"""


def test_edited_source_callee_or_constant_recompiles_in_a_fresh_process(tmp_path):
    """The disk cache key covers the kernel's source, its callees' sources and the globals they read."""
    env = {**os.environ, "LUTC_CACHE_DIR": str(tmp_path / "cache")}
    script = tmp_path / "edited.py"

    def run(**v):
        script.write_text(_EDITABLE.format(**{**dict(factor="2.0", bias="0.0", scale="1.0"), **v}))
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
        return out.stdout.strip(), len(list((tmp_path / "cache" / "kernels").rglob("*.o")))
    assert run() == ("[0.0, 2.0, 4.0, 6.0]", 1)
    assert run() == ("[0.0, 2.0, 4.0, 6.0]", 1)                 # a hit: nothing new compiled
    assert run(scale="3.0") == ("[0.0, 6.0, 12.0, 18.0]", 2)     # the kernel's own source
    assert run(bias="1.0") == ("[1.0, 3.0, 5.0, 7.0]", 3)        # a callee's source
    assert run(factor="4.0") == ("[0.0, 4.0, 8.0, 12.0]", 4)     # a global constant it reads
