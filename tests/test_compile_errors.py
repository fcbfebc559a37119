"""Compile errors in user kernels: CompilationError with file:line:col, source line and caret."""
import inspect
import traceback

import numpy as np
import pytest

import lutc
import lutc.language as tl

SIG = {"a": "*f32", "n": "i32"}


def _line_of(fn, needle):
    lines, start = inspect.getsourcelines(fn.fn)
    for i, text in enumerate(lines):
        if needle in text:
            return start + i, text.index(needle)
    raise AssertionError(needle)


def _compile_error(kernel, sig=SIG, **constexprs):
    with pytest.raises(lutc.CompilationError) as info:
        kernel.compile(sig, constexprs)
    return info.value


@lutc.jit
def undefined_name(a, n):
    x = tl.load(a + tl.arange(0, 8))
    tl.store(a + tl.arange(0, 8), x + missing_value)  # noqa: F821


@lutc.jit
def unsupported_while(a, n):
    while n > 0:
        n -= 1


@lutc.jit
def shape_mismatch(a, n):
    x = tl.load(a + tl.arange(0, 8))
    y = tl.load(a + tl.arange(0, 16))
    tl.store(a + tl.arange(0, 8), x + y)


@lutc.jit
def store_type_mismatch(a, n):
    tl.store(a, n)


@lutc.jit
def loop_type_change(a, n):
    acc = 0.0
    for i in range(n):
        acc = tl.load(a + tl.arange(0, 8))
    tl.store(a, acc)


@lutc.jit
def bad_constexpr_assert(a, n, B: tl.constexpr):
    tl.static_assert(B % 2 == 0, "B must be even")


@lutc.jit
def try_statement(a, n):
    try:
        pass
    except Exception:
        pass


@lutc.jit
def unsupported_python_builtin(a, n):
    tl.store(a, tl.load(a) * pow(n, 2))


@lutc.jit
def min_of_one_block(a, n):
    tl.store(a + tl.arange(0, 8), min(tl.load(a + tl.arange(0, 8))))


@lutc.jit
def call_of_a_plain_function(a, n):
    tl.store(a + tl.arange(0, 8), np.sqrt(tl.load(a + tl.arange(0, 8))))


@pytest.mark.parametrize("kernel,needle,message,extra", [
    (undefined_name, "missing_value", "name 'missing_value' is not defined", {}),
    (unsupported_while, "while n > 0", "while loops are not supported", {}),
    (shape_mismatch, "x + y", "shape mismatch: block of 8 lanes vs block of 16 lanes", {}),
    (store_type_mismatch, "tl.store(a, n)", "store of i32 through a pointer to f32", {}),
    (loop_type_change, "for i in range(n)", "loop-carried variable 'acc' changes type", {}),
    (bad_constexpr_assert, "tl.static_assert", "static assertion failed: B must be even", {"B": 3}),
    (try_statement, "try:", "unsupported syntax in a lutc kernel: Try", {}),
    (unsupported_python_builtin, "pow(n, 2)", "the Python builtin 'pow' is not supported", {}),
    (min_of_one_block, "min(tl.load", "min() of one kernel value: use tl.min(x)", {}),
    (call_of_a_plain_function, "np.sqrt(", "cannot call 'sqrt' inside a lutc kernel", {}),
])
def test_error_location_and_message(kernel, needle, message, extra):
    err = _compile_error(kernel, **extra)
    line, col = _line_of(kernel, needle)
    assert (err.filename, err.line, err.col) == (__file__, line, col)
    text = str(err)
    assert text.startswith(f"{__file__}:{line}:{col + 1}: error: ")
    assert message in text
    src_line, caret_line = text.splitlines()[1:3]
    assert needle in src_line
    assert caret_line.index("^") == src_line.index(needle)


def test_traceback_hides_compiler_internals():
    a = np.zeros(8, np.float32)
    with pytest.raises(lutc.CompilationError) as info:
        undefined_name[(1,)](a, 8)
    frames = [f.filename for f in traceback.extract_tb(info.value.__traceback__)]
    assert not any("/lutc/frontend/" in f or "/lutc/ir/" in f for f in frames), frames
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_errors_in_callees_point_into_the_callee():
    @lutc.jit
    def callee(v):
        return v + undefined_in_callee  # noqa: F821

    @lutc.jit
    def caller(a, n):
        tl.store(a, callee(tl.load(a)))

    err = _compile_error(caller)
    assert err.line == _line_of(callee, "undefined_in_callee")[0]


def test_missing_constexpr_and_bad_signature():
    with pytest.raises(TypeError, match="no type or value given for parameter"):
        bad_constexpr_assert.compile(SIG, {})
    with pytest.raises(ValueError, match="unknown kernel parameter type"):
        undefined_name.compile({"a": "*float99", "n": "i32"})
