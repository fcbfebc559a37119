"""Bad inputs to compiled kernels raise clear errors before any native code runs."""
import numpy as np
import pytest

import lutc
import quant
from lutc import Schedule


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    qw = quant.quantize(rng.standard_normal((48, 100)).astype(np.float32), 2, 32, method="rtn")
    k = lutc.compile(Schedule.make(bits=2, group_size=32))
    x = rng.standard_normal((3, 100)).astype(np.float32)
    return k, qw, x


@pytest.mark.parametrize("make_x,pattern", [
    (lambda x: x[:, :99].copy(), r"expected shape \(M, 100\) to match the weights' K=100, got \(3, 99\)"),
    (lambda x: x.astype(np.float64), "expected dtype float32, got float64"),
    (lambda x: x.astype(np.int32), "expected dtype float32, got int32"),
    (lambda x: np.asfortranarray(x), "expected a C-contiguous array"),
    (lambda x: np.concatenate([x, x], 1)[:, ::2], "expected a C-contiguous array"),
    (lambda x: x.reshape(3, 1, 100), r"expected shape \(M, 100\) or \(100,\), got \(3, 1, 100\)"),
    (lambda x: x.tolist(), "expected a numpy array or torch tensor, got list"),
    (lambda x: np.frombuffer(b"\0" + x.tobytes(), np.uint8)[1:].view(np.float32).reshape(3, 100),
     "4-byte aligned"),
])
def test_bad_activations(setup, make_x, pattern):
    k, qw, x = setup
    with pytest.raises(lutc.LaunchError, match=pattern):
        k(make_x(x), qw)


def test_bad_torch_activations(setup):
    torch = pytest.importorskip("torch")
    k, qw, x = setup
    with pytest.raises(lutc.LaunchError, match="expected dtype float32, got torch.float64"):
        k(torch.from_numpy(x).double(), qw)
    with pytest.raises(lutc.LaunchError, match="expected a contiguous tensor"):
        k(torch.from_numpy(np.ascontiguousarray(x.T)).T, qw)


def test_weights_of_other_bits_or_group(setup):
    k, qw, x = setup
    qw3 = quant.quantize(np.ones((48, 100), np.float32), 3, 32, method="rtn")
    with pytest.raises(lutc.LaunchError, match="compiled for bits=2, group_size=32; got a QuantizedTensor with bits=3"):
        k(x, qw3)
    qw64 = quant.quantize(np.ones((48, 100), np.float32), 2, 64, method="rtn")
    with pytest.raises(lutc.LaunchError, match="group_size=64"):
        k(x, qw64)
    with pytest.raises(lutc.LaunchError, match="expected a quant.QuantizedTensor or PackedWeights, got ndarray"):
        k(x, np.ones((48, 100), np.float32))


def test_packed_for_another_layout(setup):
    k, qw, x = setup
    other = lutc.compile(Schedule.make(bits=2, group_size=32, bn=64))
    with pytest.raises(lutc.LaunchError, match="packed for layout"):
        k(x, other.pack(qw))


def test_bad_out_and_threads(setup):
    k, qw, x = setup
    with pytest.raises(lutc.LaunchError, match=r"out: expected a writable C-contiguous float32 array of shape \(3, 48\)"):
        k(x, qw, out=np.zeros((3, 47), np.float32))
    ro = np.zeros((3, 48), np.float32)
    ro.flags.writeable = False
    with pytest.raises(lutc.LaunchError, match="writable"):
        k(x, qw, out=ro)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(lutc.LaunchError, match="threads: expected an int >= 1"):
            k(x, qw, threads=bad)
    out = np.zeros((3, 48), np.float32)
    assert k(x, qw, out=out) is out


def test_bad_schedules():
    with pytest.raises(ValueError, match="bits must be 1-4, got 5"):
        Schedule.make(bits=5, group_size=32)
    with pytest.raises(ValueError, match="lut_dtype must be one of"):
        Schedule.make(bits=2, group_size=32, lut_dtype="bf16")
    with pytest.raises(ValueError, match="unknown knob"):
        Schedule.make(bits=2, group_size=32, tile=3)
    with pytest.raises(TypeError, match="expects a Schedule"):
        lutc.compile({"bits": 2})
    with pytest.raises(ValueError, match="unknown target"):
        lutc.compile(Schedule.make(bits=2, group_size=32), target="pdp11")


def test_schedule_json_round_trip_and_hash():
    s = Schedule.make(bits=3, group_size=64, lut_dtype="float16", mb=2, threads=2)
    assert lutc.Schedule.from_json(s.to_json()) == s
    assert hash(s) == hash(lutc.Schedule.from_json(s.to_json()))
    assert s.replace(threads=1).codegen_key == s.codegen_key
    assert s.replace(g=3).codegen_key != s.codegen_key
    with pytest.raises(ValueError, match="unknown schedule field"):
        lutc.Schedule.from_dict({**s.to_dict(), "bogus": 1})


def test_bad_scalar_launch_arguments():
    import lutc.language as tl

    @lutc.jit
    def k(a, n):
        tl.store(a, n.to(tl.float32))
    a = np.zeros(1, np.float32)
    with pytest.raises(lutc.LaunchError, match="cannot pass str"):
        k[(1,)](a, "x")
    with pytest.raises(lutc.LaunchError, match="grid dimensions must be non-negative"):
        k[(-1,)](a, 1)
    with pytest.raises(lutc.LaunchError, match="threads: expected an int >= 1"):
        k[(1,)](a, 1, threads=0)
