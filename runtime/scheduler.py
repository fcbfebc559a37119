"""Continuous batching: one thread owns a multi-slot LeanDecoder and runs every active sequence
in shared forward passes, admitting new requests and retiring finished ones between steps."""
from __future__ import annotations

import collections
import dataclasses
import threading
import time

import numpy as np

from .generate import Detokenizer
from .sampling import Sampler, SamplingParams


class QueueFullError(RuntimeError):
    """The scheduler's waiting queue is full (the server answers 429)."""


class ShuttingDownError(RuntimeError):
    """The scheduler is draining or stopped and takes no new requests (the server answers 503)."""


@dataclasses.dataclass
class Request:
    """One sequence. `on_event(kind, payload)` is called from the scheduler thread:
    ("text", (piece, token_id)) as text becomes safe to emit, then once ("done", finish_reason)
    with finish_reason "stop" (EOS or a stop string), "length" (max_tokens or context), "cancelled"
    or "error: ..."."""

    prompt: list
    params: SamplingParams
    on_event: object = None
    slot: int = -1
    pos: int = 0                                  # tokens of this sequence already in its KV cache
    pending: list = dataclasses.field(default_factory=list)    # prompt tokens not yet prefilled
    next_token: int | None = None                 # sampled, to be fed at the next decode step
    tokens: list = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    t_submit: float = 0.0
    t_first: float | None = None                  # when the first generated token was sampled
    t_done: float | None = None
    text: str = ""

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


class BatchScheduler:
    """Owns `decoder` (a LeanDecoder with slots >= max_batch): nobody else may call it.

    Each step is one forward pass over: one decode row for every running sequence, plus prefill
    chunks of admitted sequences (at most `prefill_chunk` tokens while others decode, so their
    streams do not stall; up to the decoder's max_prefill when nothing decodes).
    """

    def __init__(self, decoder, tokenizer, max_batch: int | None = None, max_queue: int = 64,
                 prefill_chunk: int = 32, eos_ids=None):
        self.dec, self.tok = decoder, tokenizer
        self.max_batch = int(max_batch or decoder.slots)
        if not 1 <= self.max_batch <= decoder.slots:
            raise ValueError(f"max_batch: expected 1..{decoder.slots} (the decoder's slots), got {max_batch}")
        self.max_queue, self.prefill_chunk = int(max_queue), max(1, int(prefill_chunk))
        eos = set(decoder.cfg.eos_token_ids if eos_ids is None else eos_ids)
        if eos_ids is None and getattr(tokenizer, "eos_token_id", None) is not None:
            eos.add(int(tokenizer.eos_token_id))
        self.eos = eos
        self.waiting: collections.deque = collections.deque()
        self.running: list = []
        self.free = list(range(self.max_batch))
        self.cv = threading.Condition()
        self.accepting, self.stopped = True, False
        self.thread = None
        self.steps = 0
        self.rows_run = 0

    # ------------------------------------------------------------------ client side (any thread)
    def submit(self, prompt_ids, params: SamplingParams, on_event=None) -> Request:
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise ValueError("empty prompt: need at least one token")
        if len(ids) >= self.dec.n_ctx:
            raise ValueError(f"prompt too long: {len(ids)} tokens, the context holds {self.dec.n_ctx} "
                             "(leave room for at least one generated token)")
        self.dec._check_ids(ids, check_ctx=False)
        req = Request(prompt=ids, params=params, on_event=on_event, pending=list(ids), t_submit=time.perf_counter())
        req.sampler, req.detok = Sampler(params), Detokenizer(self.tok, params.stop)
        with self.cv:
            if not self.accepting:
                raise ShuttingDownError("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} waiting requests)")
            self.waiting.append(req)
            self.cv.notify_all()
        return req

    def cancel(self, req: Request):
        """Drop a request (a client went away); its slot is freed before the next step."""
        with self.cv:
            req.cancelled = True
            self.cv.notify_all()

    def start(self):
        self.thread = threading.Thread(target=self._loop, name="lutc-scheduler", daemon=True)
        self.thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float | None = None):
        """Refuse new requests; with drain=True finish the ones in flight, else cancel them; join."""
        with self.cv:
            self.accepting = False
            if not drain:
                for r in list(self.waiting) + self.running:
                    r.cancelled = True
            self.stopped = True
            self.cv.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)

    @property
    def busy(self) -> int:
        with self.cv:
            return len(self.waiting) + len(self.running)

    # ------------------------------------------------------------------ scheduler thread
    def _loop(self):
        while True:
            with self.cv:
                while not self.waiting and not self.running and not self.stopped:
                    self.cv.wait()
                if self.stopped and not self.waiting and not self.running:
                    return
            try:
                self.step()
            except Exception as e:            # noqa: BLE001 - a failed step ends its requests, not the server
                for r in list(self.running):
                    self._finish(r, f"error: {type(e).__name__}: {e}")

    def step(self) -> int:
        """Admit, run one forward pass over every active sequence, sample; returns the rows run."""
        with self.cv:
            for r in [r for r in self.running if r.cancelled]:
                self._finish(r, "cancelled")
            while self.waiting and self.free:
                r = self.waiting.popleft()
                if r.cancelled:
                    self._finish(r, "cancelled")
                    continue
                r.slot = self.free.pop(0)
                self.running.append(r)
            batch = list(self.running)
        if not batch:
            return 0
        slots, pos, toks, sel, owners = [], [], [], [], []
        decoding = [r for r in batch if r.next_token is not None]
        for r in decoding:
            slots.append(r.slot), pos.append(r.pos), toks.append(r.next_token)
            sel.append(len(toks) - 1), owners.append(r)
        budget = self.dec.max_prefill - len(toks)
        if decoding:
            budget = min(budget, self.prefill_chunk)
        fed = {}
        for r in batch:
            if r.next_token is not None or not r.pending or budget <= 0:
                continue
            n = min(len(r.pending), budget)
            n = 1 << (n.bit_length() - 1)             # power-of-two chunks: few distinct step programs
            chunk = r.pending[:n]
            slots += [r.slot] * n
            pos += list(range(r.pos, r.pos + n))
            toks += chunk
            budget -= n
            fed[id(r)] = n
            if n == len(r.pending):                   # the prompt's last token: its logits start generation
                sel.append(len(toks) - 1), owners.append(r)
        logits = self.dec.forward_batch(slots, pos, toks, sel)
        self.steps += 1
        self.rows_run += len(toks)
        for r in decoding:
            r.pos += 1
        for r in batch:
            n = fed.get(id(r))
            if n:
                del r.pending[:n]
                r.pos += n
        for j, r in enumerate(owners):
            self._sample(r, logits[j])
        return len(toks)

    def _sample(self, r: Request, logits: np.ndarray):
        p = r.params
        if r.cancelled:
            return self._finish(r, "cancelled")
        if len(r.tokens) >= p.max_tokens:
            return self._finish(r, "length", flush=True)
        tok = r.sampler(logits)
        if r.t_first is None:
            r.t_first = time.perf_counter()
        if tok in self.eos:
            return self._finish(r, "stop", flush=True)
        r.tokens.append(tok)
        piece, hit = r.detok.add(tok)
        if piece:
            self._emit(r, "text", (piece, tok))
        if hit:
            return self._finish(r, "stop")
        if len(r.tokens) >= p.max_tokens or r.pos >= self.dec.n_ctx:
            return self._finish(r, "length", flush=True)
        r.next_token = tok

    def _finish(self, r: Request, reason: str, flush: bool = False):
        if r.finish_reason is not None:
            return
        if flush:
            rest = r.detok.finish()
            if rest:
                self._emit(r, "text", (rest, None))
        r.text = getattr(r.detok, "text", "")
        r.finish_reason, r.t_done, r.next_token = reason, time.perf_counter(), None
        with self.cv:
            if r in self.running:
                self.running.remove(r)
                self.free.append(r.slot)
                self.free.sort()
            elif r in self.waiting:
                self.waiting.remove(r)
        self._emit(r, "done", reason)

    def _emit(self, r, kind, payload):
        if r.on_event is not None:
            try:
                r.on_event(kind, payload)
            except Exception:                     # noqa: BLE001 - a broken consumer must not stop the batch
                r.cancelled = True
