"""`lutc serve` called with the official openai client on loopback: completions and chat, streamed and
not, errors, a disconnecting client, and a bounded load test where every response equals the
single-stream greedy output for its prompt."""
import concurrent.futures as cf
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from runtime import LeanDecoder, SamplingParams, generate  # noqa: E402
from runtime._testing import CharTokenizer, llama_config, random_qmodel  # noqa: E402
from runtime.scheduler import BatchScheduler  # noqa: E402
from runtime.server import create_app  # noqa: E402

CFG = llama_config(vocab=259, hidden=128, ffn=256, layers=2, heads=4, kv_heads=2, tie=False, max_pos=256)
PROMPTS = ["Hello there", "The capital of France is", "a", "Once upon a time, in a land", "1, 2, 3,",
           "lutc serves", "zzz", "What is 2+2?"]


@pytest.fixture(scope="module")
def qm():
    return random_qmodel(CFG, bits=4, group_size=64, seed=5)


@pytest.fixture(scope="module")
def single(qm):
    return LeanDecoder(qm, n_ctx=128, threads=2, max_prefill=32, knobs={"path": "lut"})  # as a batching decoder


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread on 127.0.0.1 (the same app `lutc serve` runs)."""

    def __init__(self, qm, max_batch=4, max_queue=64):
        dec = LeanDecoder(qm, n_ctx=128, threads=2, max_prefill=32, slots=max_batch)
        self.sched = BatchScheduler(dec, CharTokenizer(), max_batch=max_batch, max_queue=max_queue,
                                    prefill_chunk=8, eos_ids=[]).start()
        self.port = _free_port()
        cfg = uvicorn.Config(create_app(self.sched, CharTokenizer(), "tiny"), host="127.0.0.1", port=self.port,
                             log_level="warning")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=60)

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)
        self.sched.stop(drain=False, timeout=30)


@pytest.fixture(scope="module")
def server(qm):
    s = Server(qm)
    yield s
    s.close()


def _greedy(single, prompt, n):
    return generate(single, CharTokenizer(), prompt, SamplingParams(max_tokens=n), eos_ids=[]).text


def test_models_and_health(server):
    models = server.client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_completion_matches_single_stream(server, single):
    want = _greedy(single, PROMPTS[1], 12)
    r = server.client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=12, temperature=0)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(PROMPTS[1].encode()) and r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    pieces, finish, usage = [], None, None
    for ch in server.client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=12, temperature=0,
                                               stream=True, stream_options={"include_usage": True}):
        if ch.choices:
            pieces.append(ch.choices[0].text)
            finish = ch.choices[0].finish_reason or finish
        if ch.usage:
            usage = ch.usage
    assert "".join(pieces) == want and finish == "length" and usage.completion_tokens == 12


def test_chat_streaming_and_not(server, single):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    prompt = "system: be brief\nuser: hi\nassistant:"
    want = _greedy(single, prompt, 10)
    r = server.client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(prompt.encode())
    text = "".join(ch.choices[0].delta.content or "" for ch in server.client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True) if ch.choices)
    assert text == want


def test_stop_seed_and_sampling(server, single):
    full = _greedy(single, PROMPTS[0], 16)
    stop = full[4:6]
    r = server.client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
    a, b = (server.client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=8, temperature=0.9,
                                             top_p=0.9, seed=7).choices[0].text for _ in range(2))
    assert a == b


@pytest.mark.parametrize("kw,param", [(dict(prompt=""), "prompt"), (dict(prompt="x", max_tokens=0), "max_tokens"),
                                      (dict(prompt="x", temperature=-1), "temperature"),
                                      (dict(prompt="x", top_p=2), "top_p"), (dict(prompt=[1, "a"]), "prompt"),
                                      (dict(prompt="x" * 200), "prompt"), (dict(prompt="x", n=2), "n")])
def test_bad_requests_are_400(server, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        server.client.completions.create(model="tiny", **kw)
    assert e.value.status_code == 400
    err = e.value.body if isinstance(e.value.body, dict) and "message" in e.value.body else e.value.body["error"]
    assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param


def test_malformed_json_and_messages(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_disconnect_frees_slot(server):
    with httpx.stream("POST", server.url + "/v1/completions",
                      json=dict(prompt="abc", max_tokens=100, temperature=0, stream=True)) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break
    for _ in range(100):
        if httpx.get(server.url + "/health").json()["requests"] == 0:
            break
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").json()["requests"] == 0
    assert server.sched.free == list(range(server.sched.max_batch))


def test_full_queue_is_429(qm):
    s = Server(qm, max_batch=1, max_queue=0)
    try:
        with pytest.raises(openai.RateLimitError) as e:
            s.client.completions.create(model="tiny", prompt="x", max_tokens=2)
        assert e.value.status_code == 429
    finally:
        s.close()


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_load_concurrent_clients_equal_single_stream(server, single, n):
    """n clients at once (4 slots: 8 clients also queue); each response is its prompt's greedy output."""
    want = {p: _greedy(single, p, 16) for p in PROMPTS[:n]}

    def call(i):
        p = PROMPTS[i]
        if i % 2:
            return p, "".join(ch.choices[0].text for ch in server.client.completions.create(
                model="tiny", prompt=p, max_tokens=16, temperature=0, stream=True) if ch.choices)
        return p, server.client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0).choices[0].text
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(n) as ex:
        got = list(ex.map(call, range(n), timeout=120))
    assert time.perf_counter() - t0 < 120
    assert {p: t for p, t in got} == want


def test_cli_serve_validates_options(capsys):
    from lutc.cli import main
    assert main(["serve", "smollm2-135m", "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err
    assert main(["serve", "/nonexistent/ckpt", "--port", "0"]) == 2
    assert "neither a quantized checkpoint" in capsys.readouterr().err
