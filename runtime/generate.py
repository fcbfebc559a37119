"""Text generation on a LeanDecoder: prompt/chat encoding, sampling, EOS and stop strings, streaming, timings."""
from __future__ import annotations

import dataclasses
import resource
import sys
import time

from .sampling import Sampler, SamplingParams


@dataclasses.dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    tokens: list
    stop_reason: str            # "eos", "stop", "length" or "context"
    prefill_s: float
    decode_s: float
    decode_steps: int = 0

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tps(self) -> float:
        """Decode forward passes per second (the first token is sampled from prefill's logits)."""
        n = self.decode_steps
        return n / self.decode_s if self.decode_s > 0 and n else float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def encode_prompt(tokenizer, prompt: str, chat: bool = False) -> list:
    """Token ids of `prompt`; with chat=True the tokenizer's chat template (if it has one) wraps it."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty prompt: give some text to continue")
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:
        ids = tokenizer.encode(prompt)
    ids = [int(t) for t in ids]
    if not ids:
        raise ValueError("empty prompt: the tokenizer produced no tokens")
    return ids


class Detokenizer:
    """Incremental decoding that never emits half a UTF-8 character or the start of a stop string.

    The text is always the tokenizer's decode of all tokens so far. To keep a token's cost from
    growing with the output (a full decode per token: 0.5 ms at 2000 SmolLM2 tokens, per sequence
    per step), only the tokens after an anchor w are decoded again: text = decode(ids[:w]) +
    decode(ids[w:]). Every WINDOW tokens the full decode is taken once, and w moves to WINDOW
    tokens before the end only if the split is exact there (decode(ids[:w]) + decode(ids[w:]) ==
    decode(ids)); a split that stops being exact (checked at the same points) drops the anchor."""

    WINDOW = 32

    def __init__(self, tokenizer, stop):
        self.tok, self.stop, self.ids, self.sent = tokenizer, stop, [], 0
        self.w, self.head, self.check_at = 0, "", 2 * self.WINDOW

    def _decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def _full_text(self) -> str:
        ids, n = self.ids, len(self.ids)
        if n < self.check_at:
            return self.head + self._decode(ids[self.w:])
        self.check_at = n + self.WINDOW
        full = self._decode(ids)
        if self.w and self.head + self._decode(ids[self.w:]) != full:
            self.w, self.head = 0, ""               # the old split is no longer exact: decode everything
        w = n - self.WINDOW
        head = self._decode(ids[:w])
        if head + self._decode(ids[w:]) == full:
            self.w, self.head = w, head
        return full

    def add(self, token) -> tuple[str, bool]:
        """Append a token; returns (new text safe to print, hit a stop string)."""
        self.ids.append(token)
        text = self._full_text()
        for s in self.stop:
            i = text.find(s)
            if i >= 0:
                self.text = text[:i]
                return self._emit(self.text), True
        self.text = text
        if text.endswith("\ufffd"):
            return "", False
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._emit(text[:len(text) - hold]), False

    def _emit(self, upto):
        out = upto[self.sent:] if len(upto) > self.sent else ""
        self.sent = max(self.sent, len(upto))
        return out

    def finish(self) -> str:
        return self._emit(getattr(self, "text", ""))


def generate(decoder, tokenizer, prompt, params: SamplingParams = SamplingParams(), chat=False,
             stream=None, eos_ids=None) -> GenerationResult:
    """Generate from `prompt` (a string, or a list of token ids). `stream(text)` gets text as it is produced."""
    ids = encode_prompt(tokenizer, prompt, chat) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        raise ValueError("empty prompt: need at least one token")
    if len(ids) >= decoder.n_ctx:
        raise ValueError(f"prompt too long: {len(ids)} tokens, the context holds {decoder.n_ctx} "
                         "(leave room for at least one generated token)")
    eos = set(decoder.cfg.eos_token_ids if eos_ids is None else eos_ids)
    if eos_ids is None and getattr(tokenizer, "eos_token_id", None) is not None:
        eos.add(int(tokenizer.eos_token_id))
    sampler, detok = Sampler(params), Detokenizer(tokenizer, params.stop)
    decoder.reset()
    t0 = time.perf_counter()
    logits = decoder.prefill(ids)
    t1 = time.perf_counter()
    out, reason, steps = [], "length", 0
    while len(out) < params.max_tokens:
        tok = sampler(logits)
        if tok in eos:
            reason = "eos"
            break
        out.append(tok)
        piece, hit = detok.add(tok)
        if piece and stream:
            stream(piece)
        if hit:
            reason = "stop"
            break
        if len(out) == params.max_tokens:
            break
        if decoder.pos >= decoder.n_ctx:
            reason = "context"
            break
        logits = decoder.decode(tok)
        steps += 1
    t2 = time.perf_counter()
    rest = detok.finish() if reason != "stop" else ""
    if rest and stream:
        stream(rest)
    text = getattr(detok, "text", "")
    return GenerationResult(text=text, prompt_tokens=len(ids), tokens=out, stop_reason=reason,
                            prefill_s=t1 - t0, decode_s=t2 - t1, decode_steps=steps)
