"""IR: the verifier catches malformed IR; passes keep it valid; the printer is readable."""
import pytest

import lutc
import lutc.language as tl
from lutc.backend.target import get_target
from lutc.ir import Function, IRBuilder, Param, VerificationError, verify
from lutc.ir import types as T
from lutc.passes import PIPELINE, run_pipeline


@lutc.jit
def copy_kernel(a, b, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(a + offs, mask=offs < n)
    tbl = tl.load(a + tl.arange(0, 16)).to(tl.int8)
    idx = (offs & 15).to(tl.uint8)
    tl.store(b + offs, v + tl.lookup(tbl, idx).to(tl.float32), mask=offs < n)
    tl.store(b + offs * 2, v, mask=offs < n)


SIG = {"a": "*f32", "b": "*f32", "n": "i32"}


def test_pipeline_verifies_after_each_pass_and_lowers_lookup():
    fn = copy_kernel.specialize(SIG, {"BLOCK": 32})
    trace = []
    run_pipeline(fn, get_target("host"), trace=trace)
    assert [name for name, _ in trace] == [name for name, _ in PIPELINE]
    text = str(fn)
    assert "lookup" not in text and "shuffle_bytes" in text
    accesses = [op.attrs.get("access") for op in fn.walk() if op.opname in ("load", "store")]
    assert accesses.count("contig") >= 3 and "gather" in accesses  # offs * 2 is strided


def test_printer_shows_types_and_names():
    text = str(copy_kernel.specialize(SIG, {"BLOCK": 32}))
    assert text.startswith("func @copy_kernel(%a: *f32, %b: *f32, %n: i32)")
    assert "arange  {start=0, end=32} : <32xi32>" in text


def test_verifier_rejects_use_before_def_and_bad_types():
    fn = Function("bad", [Param("p", T.PointerType(T.float32))])
    b = IRBuilder(fn.body)
    c = b.const(1.0, T.float32)
    b.store(fn.body.args[0], c)
    verify(fn)
    fn.body.ops.reverse()  # the store now uses c before it is defined
    with pytest.raises(VerificationError, match="used before it is defined"):
        verify(fn)
    fn.body.ops.reverse()
    fn.body.ops[0].results[0].type = T.int32  # const result type no longer matches the store
    with pytest.raises(VerificationError, match="stored type"):
        verify(fn)


def test_verifier_rejects_loops_yielding_wrong_types():
    fn = Function("loop", [Param("n", T.int32)])
    b = IRBuilder(fn.body)
    zero = b.const(0, T.int32)
    one = b.const(1, T.int32)
    op, body = b.for_op(zero, fn.body.args[0], one, [b.const(0.0, T.float32)])
    IRBuilder(body).yield_([one])
    with pytest.raises(VerificationError, match="yielded types"):
        verify(fn)
