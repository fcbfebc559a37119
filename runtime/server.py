"""An OpenAI-compatible HTTP API (FastAPI) over a BatchScheduler: /v1/models, /v1/completions,
/v1/chat/completions (server-sent events when stream=true), /health."""

import asyncio
import json
import time
import uuid

from .sampling import SamplingParams
from .scheduler import QueueFullError, ShuttingDownError


class BadRequest(ValueError):
    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


def error_body(message, type_="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": str(message), "type": type_, "param": param, "code": code}}


def create_app(scheduler, tokenizer, model_name: str):
    """The FastAPI app. The scheduler must be started; the app stops it (draining) at shutdown."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, lambda: scheduler.stop(drain=True))

    app = FastAPI(title="lutc", lifespan=lifespan)
    created = int(time.time())

    def err(status, message, type_="invalid_request_error", param=None, code=None):
        return JSONResponse(error_body(message, type_, param, code), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc):
        return err(400, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        return err(exc.status_code, exc.detail, "invalid_request_error" if exc.status_code < 500 else "server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "requests": scheduler.busy, "max_batch": scheduler.max_batch}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "lutc", "max_model_len": scheduler.dec.n_ctx}]}

    async def handle(request: Request, chat: bool):
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return err(400, "the request body is not valid JSON")
        try:
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            ids = _chat_ids(tokenizer, body) if chat else _prompt_ids(tokenizer, body)
            params, stream, include_usage = _params(body, chat, scheduler.dec.n_ctx - len(ids))
        except BadRequest as e:
            return err(400, e, param=e.param)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def on_event(kind, payload):
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))
        try:
            req = scheduler.submit(ids, params, on_event)
        except QueueFullError as e:
            return err(429, e, "rate_limit_exceeded", code="queue_full")
        except ShuttingDownError as e:
            return err(503, e, "server_error", code="shutting_down")
        except ValueError as e:
            return err(400, e, param="prompt" if not chat else "messages")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        meta = dict(id=rid, created=int(time.time()), model=body.get("model") or model_name)
        if stream:
            return StreamingResponse(_sse(scheduler, req, queue, meta, chat, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text = []
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(queue.get(), 0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        scheduler.cancel(req)
                        return err(499, "client disconnected")
                    continue
                if kind == "text":
                    text.append(payload[0])
                else:
                    break
        except asyncio.CancelledError:
            scheduler.cancel(req)
            raise
        if payload.startswith("error"):
            return err(500, payload, "server_error")
        finish = "stop" if payload == "stop" else "length"
        out = "".join(text)
        choice = ({"index": 0, "message": {"role": "assistant", "content": out}, "logprobs": None,
                   "finish_reason": finish} if chat else
                  {"index": 0, "text": out, "logprobs": None, "finish_reason": finish})
        return dict(meta, object="chat.completion" if chat else "text_completion", choices=[choice],
                    usage=_usage(req))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


def _usage(req) -> dict:
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.completion_tokens,
            "total_tokens": req.prompt_tokens + req.completion_tokens}


async def _sse(scheduler, req, queue, meta, chat, include_usage):
    """Server-sent events: one chunk per text piece, one with the finish reason, [optional usage], [DONE]."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices, **extra):
        return "data: " + json.dumps(dict(meta, object=obj, choices=choices, **extra)) + "\n\n"

    def piece(text, finish=None):
        if chat:
            delta = {"content": text} if text is not None else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    done = False
    try:
        if chat:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        while True:
            kind, payload = await queue.get()
            if kind == "text":
                yield chunk([piece(payload[0])])
                continue
            done = True
            if payload.startswith("error"):
                yield "data: " + json.dumps(error_body(payload, "server_error")) + "\n\n"
            else:
                yield chunk([piece(None, "stop" if payload == "stop" else "length")])
                if include_usage:
                    yield chunk([], usage=_usage(req))
            yield "data: [DONE]\n\n"
            return
    finally:
        if not done:                          # the client went away (or the server stops): free the slot
            scheduler.cancel(req)


def _prompt_ids(tokenizer, body) -> list:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        if not p:
            raise BadRequest("prompt: must not be empty", "prompt")
        return [int(t) for t in tokenizer.encode(p)]
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return list(p)
    raise BadRequest("prompt: expected a non-empty string, a list of token ids, or a list with one of either "
                     "(batched prompts are not supported)", "prompt")


def _chat_ids(tokenizer, body) -> list:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages: expected a non-empty list", "messages")
    clean = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise BadRequest("messages: each needs a role of system, user or assistant", "messages")
        content = m.get("content")
        if isinstance(content, list):          # [{"type": "text", "text": ...}, ...]
            if any(not isinstance(c, dict) or c.get("type") != "text" for c in content):
                raise BadRequest("messages: only text content is supported", "messages")
            content = "".join(c.get("text", "") for c in content)
        if not isinstance(content, str):
            raise BadRequest("messages: content must be a string", "messages")
        clean.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(clean, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:                                       # no template: plain "role: content" lines
        ids = tokenizer.encode("".join(f"{m['role']}: {m['content']}\n" for m in clean) + "assistant:")
    return [int(t) for t in ids]


def _number(body, key, default, lo, hi, kind=float):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise BadRequest(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {v!r}", key)
    if not lo <= v <= hi:
        raise BadRequest(f"{key}: expected {lo} <= {key} <= {hi}, got {v!r}", key)
    return kind(v)


def _params(body, chat, room):
    """SamplingParams, stream flag, include_usage from an OpenAI request body (BadRequest if invalid)."""
    if room < 1:
        raise BadRequest("prompt too long: no room left in the context of the model", "messages" if chat else "prompt")
    n = _number(body, "n", 1, 1, 1, int)
    del n
    if body.get("echo") or body.get("logprobs") not in (None, False, 0) or body.get("best_of") not in (None, 1):
        raise BadRequest("echo, logprobs and best_of are not supported")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, room if chat else 16, 1, 1 << 30, int)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise BadRequest("top_p: expected 0 < top_p <= 1", "top_p")
    seed = _number(body, "seed", None, -(1 << 63), (1 << 64) - 1, int)
    stop = body.get("stop")
    stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or any(not isinstance(s, str) or not s for s in stop):
        raise BadRequest("stop: expected a non-empty string or a list of up to 4", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream: expected a boolean", "stream")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise BadRequest("stream_options: expected an object", "stream_options")
    return (SamplingParams(temperature=temperature, top_p=top_p, seed=None if seed is None else seed % (1 << 64),
                           max_tokens=max_tokens, stop=tuple(stop)), stream, bool(so.get("include_usage")))


def serve(model_or_dir, host="127.0.0.1", port=8000, threads=None, max_batch=4, n_ctx=None, max_queue=64,
          prefill_chunk=32, model_name=None, log_level="info", **load_opts):
    """Load the model with `max_batch` KV slots, start the scheduler and run uvicorn until Ctrl-C
    (uvicorn stops accepting, in-flight requests finish, then the scheduler drains and stops)."""
    import sys

    import uvicorn

    from .models import load_decoder
    from .scheduler import BatchScheduler
    t0 = time.perf_counter()
    dec, tok = load_decoder(model_or_dir, threads=threads, n_ctx=n_ctx, slots=max_batch, **load_opts)
    if tok is None:
        raise ValueError(f"{model_or_dir}: the checkpoint has no tokenizer")
    sched = BatchScheduler(dec, tok, max_batch=max_batch, max_queue=max_queue, prefill_chunk=prefill_chunk).start()
    name = model_name or str(model_or_dir).rstrip("/").rsplit("/", 1)[-1]
    print(f"lutc serve: {name} loaded in {time.perf_counter() - t0:.1f} s | {max_batch} slots x {dec.n_ctx} "
          f"tokens | threads {dec.threads} | http://{host}:{port}/v1", file=sys.stderr)
    app = create_app(sched, tok, name)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60)
    sched.stop(drain=True)
    return 0
