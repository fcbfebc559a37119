"""Batched decoding: forward_batch rows of several sequences == each sequence alone; the scheduler's
continuous batching gives every request exactly its single-stream output."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import LeanDecoder, SamplingParams, generate
from runtime._testing import CharTokenizer, llama_config, random_qmodel, runtime_greedy
from runtime.linear import LinearWeights
from runtime.scheduler import BatchScheduler, QueueFullError, ShuttingDownError

CFG = llama_config(vocab=300, hidden=128, ffn=256, layers=2, heads=4, kv_heads=2, tie=False, max_pos=256)
PROMPTS = [[1, 5, 7, 9, 33, 100], [1, 200], [1, 17, 17, 17, 42, 250, 3, 99, 128, 64, 12, 8, 8, 9, 10, 11, 12],
           [1, 77, 78]]


@pytest.fixture(scope="module")
def qm():
    return random_qmodel(CFG, bits=4, group_size=64, seed=3)


@pytest.fixture(scope="module", params=["float32", None], ids=["fp32-tables", "default-tables"])
def decs(qm, request):
    single = LeanDecoder(qm, n_ctx=96, threads=2, lut_dtype=request.param, max_prefill=16, knobs={"path": "lut"})
    multi = LeanDecoder(qm, n_ctx=96, threads=2, lut_dtype=request.param, max_prefill=16, slots=4)
    return single, multi


def test_forward_batch_rows_equal_single_stream(decs):
    single, multi = decs
    # a batching decoder keeps every bucket on the LUT path (rows independent of their batch)
    assert {s.path for s in multi.lm_head.by_bucket.values()} == {"lut"} and max(multi.lm_head.by_bucket) >= 16
    a, b = PROMPTS[0], PROMPTS[2]
    single.reset()
    want_a = single.prefill(a, all_logits=True)
    single.reset()
    want_b = single.prefill(b, all_logits=True)
    # a's prompt in slot 2 in one pass; then b's prompt in slot 0 in chunks mixed with a's decode rows
    got_a = multi.forward_batch([2] * len(a), range(len(a)), a, range(len(a))).copy()
    np.testing.assert_allclose(got_a, want_a, rtol=0, atol=1e-4 * np.abs(want_a).max())
    rows = []
    for s in range(0, len(b), 5):
        chunk = b[s:s + 5]
        out = multi.forward_batch([2] + [0] * len(chunk), [len(a) + s // 5] + list(range(s, s + len(chunk))),
                                  [7] + chunk, range(1, len(chunk) + 1))
        rows.append(out.copy())
    np.testing.assert_allclose(np.concatenate(rows), want_b, rtol=0, atol=1e-4 * np.abs(want_b).max())


def test_forward_batch_validates(decs):
    _, multi = decs
    with pytest.raises(ValueError, match="slot"):
        multi.forward_batch([4], [0], [1], [0])
    with pytest.raises(ValueError, match="position"):
        multi.forward_batch([0], [96], [1], [0])
    with pytest.raises(ValueError, match="vocabulary"):
        multi.forward_batch([0], [0], [300], [0])
    with pytest.raises(ValueError, match="logit_rows"):
        multi.forward_batch([0], [0], [1], [1])
    with pytest.raises(ValueError, match="max_prefill"):
        multi.forward_batch([0] * 17, range(17), [1] * 17, [0])
    with pytest.raises(ValueError, match="slots"):
        LeanDecoder(random_qmodel(CFG), n_ctx=8, slots=0)


def _run_all(sched, reqs, limit=500):
    for _ in range(limit):
        if all(r.finish_reason for r in reqs):
            return
        sched.step()
    raise AssertionError("scheduler did not finish")


def test_scheduler_batched_greedy_equals_single_stream(decs):
    single, multi = decs
    want = [runtime_greedy(single, p, 20) for p in PROMPTS]
    sched = BatchScheduler(multi, CharTokenizer(), max_batch=3, prefill_chunk=4, eos_ids=[])
    reqs = [sched.submit(p, SamplingParams(max_tokens=20)) for p in PROMPTS]     # 4 requests, 3 slots
    _run_all(sched, reqs)
    assert [r.tokens for r in reqs] == want
    assert all(r.finish_reason == "length" for r in reqs)
    assert sched.rows_run > sched.steps              # steps did run several rows together
    # staggered arrivals: a request joins while others decode
    first = sched.submit(PROMPTS[2], SamplingParams(max_tokens=20))
    for _ in range(5):
        sched.step()
    late = sched.submit(PROMPTS[0], SamplingParams(max_tokens=20))
    _run_all(sched, [first, late])
    assert [first.tokens, late.tokens] == [want[2], want[0]]


def test_scheduler_text_stops_and_events_match_generate(decs):
    single, multi = decs
    tok = CharTokenizer()
    ref = generate(single, tok, PROMPTS[1], SamplingParams(max_tokens=12), eos_ids=[])
    stop = ref.text[3:5] if len(ref.text) >= 5 else None
    params = SamplingParams(max_tokens=12, stop=(stop,) if stop else ())
    ref = generate(single, tok, PROMPTS[1], params, eos_ids=[])
    events = []
    sched = BatchScheduler(multi, tok, eos_ids=[])
    r = sched.submit(PROMPTS[1], params, on_event=lambda k, p: events.append((k, p)))
    other = sched.submit(PROMPTS[0], SamplingParams(max_tokens=12, temperature=0.8, seed=1))
    _run_all(sched, [r, other])
    assert r.tokens == ref.tokens and r.text == ref.text
    assert "".join(p[0] for k, p in events if k == "text") == ref.text
    assert events[-1] == ("done", "stop" if ref.stop_reason in ("stop", "eos") else "length")


def test_scheduler_cancel_queue_and_shutdown(qm):
    dec = LeanDecoder(qm, n_ctx=32, threads=1, max_prefill=8, slots=2)
    sched = BatchScheduler(dec, CharTokenizer(), max_queue=2, eos_ids=[])
    a = sched.submit([1, 2, 3], SamplingParams(max_tokens=50))
    sched.submit([1, 2], SamplingParams(max_tokens=2))
    with pytest.raises(QueueFullError):
        sched.submit([1], SamplingParams(max_tokens=2))
    sched.step()
    assert a.slot >= 0 and len(sched.free) == 0
    sched.cancel(a)
    sched.step()
    assert a.finish_reason == "cancelled" and a.slot in sched.free
    with pytest.raises(ValueError, match="too long"):
        sched.submit(list(range(1, 33)), SamplingParams())
    c = sched.submit([1, 9], SamplingParams(max_tokens=40))      # runs into the context limit
    sched.start()
    sched.stop(drain=True, timeout=60)
    assert c.finish_reason == "length" and c.prompt_tokens + c.completion_tokens <= 33
    with pytest.raises(ShuttingDownError):
        sched.submit([1], SamplingParams())


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(1, 4), n=st.integers(1, 100), k=st.one_of(st.integers(1, 300), st.sampled_from([128, 257])),
       m=st.integers(2, 8), lut_dtype=st.sampled_from(["int8", "float16", "float32"]),
       target=st.sampled_from(["host", "x86-avx2"]), seed=st.integers(0, 2**16))
def test_decode_batch_schedules_give_each_row_its_single_row_result(bits, n, k, m, lut_dtype, target, seed):
    """The per-M schedules of a decode batch (mb = lutc.ops.default_mb of m's bucket) compute every row exactly
    as the one-row decode schedule does (what batched == single-stream greedy rests on), and match
    the numpy reference within the kernel's error bound."""
    import quant
    from kernel_reference import error_bound, reference
    from lutc.ops import default_mb, get_kernel
    from lutc.schedule import m_bucket
    from runtime.linear import schedules
    rng = np.random.default_rng(seed)
    qw = quant.quantize(rng.standard_normal((n, k)).astype(np.float32), bits, 64, method="rtn")
    x = rng.standard_normal((m, k)).astype(np.float32)
    dec, _ = schedules(bits, 64, n, k, lut_dtype=lut_dtype, m_prefill=16)
    one = get_kernel(dec, target)
    batch = LinearWeights(qw, max_m=16, lut_dtype=lut_dtype).kernel_for(m)
    assert batch.schedule.mb == default_mb(m_bucket(m)) and batch.schedule.layout_key == dec.layout_key
    batch = get_kernel(batch.schedule, target)
    packed = one.pack(qw)
    got = batch(x, packed, threads=2)
    want = np.stack([one(x[i:i + 1], packed, threads=1)[0] for i in range(m)])
    np.testing.assert_array_equal(got, want)
    ref, _ = reference(x, qw)
    assert (np.abs(got.astype(np.float64) - ref) <= error_bound(x, qw, batch.schedule)).all()
