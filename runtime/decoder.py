"""LeanDecoder: a LLaMA-family decoder whose every linear layer is a lutc kernel, run as one native program per step."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
from lutc.launcher import LaunchProgram, resolve_threads

from . import kernels as K
from .config import FUSED, DecoderConfig
from .decoder_checks import AutoThreads, check_model, check_packed
from .layers import load_layers, norm_weight
from .linear import LinearWeights
from .packcache import PackedModel


class _Views:
    """Row views of the decoder's buffers for one chunk size m, and the bound kernel launches."""

    def __init__(self, dec: "LeanDecoder", m: int):
        c = dec.cfg
        self.m = m
        self.h, self.xn, self.o = dec._h[:m], dec._xn[:m], dec._o[:m]
        self.qkv = dec._qkv[:m]
        self.qk = self.qkv[:, :c.q_size + c.kv_size].reshape(m, c.num_heads + c.num_kv_heads, c.head_dim)
        half = c.head_dim // 2
        self.qk_a, self.qk_b = self.qk[..., :half], self.qk[..., half:]
        self.q = self.qkv[:, :c.q_size].reshape(m, c.num_heads, c.head_dim)
        self.k = self.qkv[:, c.q_size:c.q_size + c.kv_size].reshape(m, c.num_kv_heads, c.head_dim)
        self.v = self.qkv[:, c.q_size + c.kv_size:].reshape(m, c.num_kv_heads, c.head_dim)
        self.t1, self.t2 = dec._t1[:m], dec._t2[:m]
        self.attn = dec._attn[:m]
        self.gate, self.up = dec._gu[:m, :c.intermediate_size], dec._gu[:m, c.intermediate_size:]
        self.act = dec._act[:m]
        self.launches = [(L.qkv.bind(dec._xn, dec._qkv, m), L.o.bind(dec._attn, dec._o, m),
                          L.gu.bind(dec._xn, dec._gu, m), L.down.bind(dec._act, dec._o, m))
                         for L in dec.layers]


class LeanDecoder:
    """Greedy-friendly forward passes over token ids: `prefill(ids)` then `decode(id)`, both -> logits.

    qm is a quant.QuantizedModel. Quantized weights are packed for lutc and never dequantized;
    q/k/v and gate/up are fused into one matrix each (one table build + one GEMM).
    engine="native" runs a whole forward pass (embedding, norms, RoPE, attention, MLP, lm_head) as
    one native Program of lutc kernels: one Python->native call per step. engine="numpy" runs
    the same lutc GEMMs with numpy glue in between (the readable reference).

    slots > 1 gives each of `slots` sequences its own KV cache: `forward_batch` runs rows of
    several sequences (decode tokens and prefill chunks, each row with its own slot and position)
    in one forward pass; prefill/decode use slot 0. Such a batching decoder keeps every M bucket on
    the LUT path (unless `knobs` set "path"): a LUT row's result does not depend on the other rows
    of its batch, so a request's output does not depend on what it was batched with. A one-slot
    decoder runs each bucket's schedule as chosen (on VNNI / dotprod hosts, prefill chunks of 16+
    rows take the int8 dot path, whose rounding differs slightly).
    """

    def __init__(self, qm, n_ctx: int | None = None, threads: int | None = None, lut_dtype: str | None = None,
                 max_prefill: int = 128, engine: str = "native", slots: int = 1,
                 knobs: dict | None = None):
        if engine not in ("native", "numpy"):
            raise ValueError(f"engine: expected 'native' or 'numpy', got {engine!r}")
        self.engine = engine
        self.cfg = c = DecoderConfig.from_hf(qm.config)
        self.auto = AutoThreads() if threads == "auto" else None
        self.threads = self.auto.current if self.auto else resolve_threads(threads)
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots: expected an int >= 1, got {slots!r}")
        if engine == "numpy" and slots != 1:
            raise ValueError("engine='numpy' runs one sequence (slots=1)")
        if engine == "numpy" and (c.family != "llama" or any(c.layer_windows)):
            raise ValueError("engine='numpy' runs LLaMA models without sliding windows; use engine='native'")
        self.slots = slots
        self.n_ctx = int(n_ctx or min(c.max_position_embeddings, 2048))
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx: expected >= 1, got {n_ctx}")
        self.max_prefill = max(1, min(int(max_prefill), self.n_ctx))
        self.meta = dict(qm.meta)
        self.config_dict = dict(qm.config)
        self.tokenizer_dir = qm.tokenizer_dir
        prepacked = qm.packed if isinstance(qm, PackedModel) else None
        if prepacked is None:
            check_model(qm, c)
        else:
            check_packed(qm, c)
        mm = self.max_prefill
        if slots > 1 and "path" not in (knobs or {}):
            knobs = dict(knobs or {}, path="lut")      # batch-invariant rows (see the class docstring)
        self.layers = load_layers(qm, c, prepacked, mm, lut_dtype, slots, self.n_ctx, knobs)
        self.lm_head = LinearWeights(prepacked["lm_head"] if prepacked is not None else qm.linears["lm_head"],
                                   mm, lut_dtype, "lm_head", knobs)
        self.lut_dtype = lut_dtype
        self.embed = qm.tensors["model.embed_tokens.weight"]
        self.norm = qm.tensors["model.norm.weight"]
        self._embed_run = self.embed if c.embed_scale == 1.0 else self.embed * np.float32(c.embed_scale)
        self._norm_run = norm_weight(self.norm, c)
        self.cos, self.sin = c.rope_tables(self.n_ctx)
        self.cos_local, self.sin_local = c.rope_tables(self.n_ctx, local=True) if c.local_rope_theta else (None, None)
        H, F = c.hidden_size, c.intermediate_size
        z = lambda cols: np.zeros((mm, cols), np.float32)  # noqa: E731
        self._h, self._xn, self._o, self._attn = z(H), z(H), z(H), z(c.q_size)
        self._qkv, self._gu, self._act = z(c.q_size + 2 * c.kv_size), z(2 * F), z(F)
        half = c.head_dim // 2
        self._t1 = np.zeros((mm, c.num_heads + c.num_kv_heads, half), np.float32)
        self._t2 = np.zeros_like(self._t1)
        self._logits = z(c.vocab_size)
        self._xsel = z(H)                                       # the rows whose logits are wanted
        self._scores = np.zeros((c.num_kv_heads, c.num_heads // c.num_kv_heads, self.n_ctx), np.float32)
        self._views = {}
        self._lm_launch = {}
        self._programs = {}
        self._ids = np.zeros(mm, np.int32)
        self._rows = np.zeros((mm, 2), np.int32)                # per row: (slot, position)
        self._sel = np.zeros(mm, np.int32)                      # rows of _xn that go through lm_head
        self._attn_scores = np.zeros(mm * c.num_heads * self.n_ctx, np.float32)
        self.pos = 0
        self.scale = c.query_scale or 1.0 / math.sqrt(c.head_dim)
        self._busy = threading.Lock()        # one forward pass at a time (they share pos and buffers)
        if engine == "native":
            self._kern = _glue_kernels(c)

    # ------------------------------------------------------------------ public API
    @property
    def weight_bytes(self) -> int:
        """Bytes of packed quantized weights read per decoded token (all linears incl. lm_head)."""
        return sum(L.qkv.nbytes + L.o.nbytes + L.gu.nbytes + L.down.nbytes for L in self.layers) \
            + self.lm_head.nbytes

    def to_packed_model(self) -> PackedModel:
        """The packed weights and float tensors of this decoder (what runtime.packcache saves)."""
        packed, tensors = {}, {}
        for i, L in enumerate(self.layers):
            for k, lw in zip(FUSED, (L.qkv, L.o, L.gu, L.down)):
                packed[f"{i}.{k}"] = lw.packed
            tensors.update(L.t)
        packed["lm_head"] = self.lm_head.packed
        tensors["model.embed_tokens.weight"], tensors["model.norm.weight"] = self.embed, self.norm
        return PackedModel(self.config_dict, tensors, packed, self.tokenizer_dir, self.meta)

    def reset(self):
        self.pos = 0

    def set_threads(self, threads):
        """Change the native thread count: an int >= 1, or "auto" (re-chosen from measured steps)."""
        self.auto = AutoThreads() if threads == "auto" else None
        self.threads = self.auto.current if self.auto else resolve_threads(threads)

    def prefill(self, ids, all_logits: bool = False) -> np.ndarray:
        """Run the tokens `ids` from the current position; logits of the last one (V,) or of all (M, V)."""
        ids = self._check_ids(ids)
        outs = []
        with self._exclusive():
            for s in range(0, len(ids), self.max_prefill):
                chunk = ids[s:s + self.max_prefill]
                out = self._forward(chunk, all_logits)
                outs.append(out.copy() if all_logits else out[-1:])
        return np.concatenate(outs, 0) if all_logits else outs[-1][0].copy()

    def decode(self, token: int) -> np.ndarray:
        """One token at the current position; returns its logits (V,), a view valid until the next call."""
        if self.pos >= self.n_ctx:
            raise ValueError(f"context full: {self.n_ctx} tokens (raise n_ctx)")
        ids = self._check_ids([token])
        with self._exclusive():
            return self._forward(ids, False)[0]

    def forward_batch(self, slots, positions, tokens, logit_rows) -> np.ndarray:
        """One forward pass over rows of several sequences: row r is token tokens[r] of the sequence in
        KV slot slots[r] at position positions[r] (rows of one slot in increasing, contiguous
        positions; the slot's cache must hold its positions before). Returns the logits (len(logit_rows), V)
        of the rows logit_rows, a view valid until the next call. Positions are the caller's to track."""
        if self.engine != "native":
            raise ValueError("forward_batch needs engine='native'")
        ids = self._check_ids(tokens, check_ctx=False)
        m = len(ids)
        if m > self.max_prefill:
            raise ValueError(f"batch of {m} rows exceeds max_prefill={self.max_prefill}")
        slots = np.asarray(slots, np.int64)
        positions = np.asarray(positions, np.int64)
        sel = np.asarray(logit_rows, np.int64)
        if slots.shape != (m,) or positions.shape != (m,):
            raise ValueError(f"slots and positions: expected {m} each, got {slots.shape} and {positions.shape}")
        if m and (slots.min() < 0 or slots.max() >= self.slots):
            raise ValueError(f"slot outside 0..{self.slots - 1}")
        if m and (positions.min() < 0 or positions.max() >= self.n_ctx):
            raise ValueError(f"position outside the context 0..{self.n_ctx - 1}")
        if sel.ndim != 1 or sel.size > m or (sel.size and (sel.min() < 0 or sel.max() >= m)):
            raise ValueError(f"logit_rows: expected up to {m} row indices below {m}")
        with self._exclusive():
            return self._run(ids, slots, positions, sel, None)

    # ------------------------------------------------------------------ internals
    def _exclusive(self):
        """The decoder's lock, refused (not waited for) if another thread is in a forward pass."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("LeanDecoder is running a forward pass in another thread; a decoder serves "
                               "one thread at a time (use one decoder per thread)")
        return _Release(self._busy)

    def _check_ids(self, ids, check_ctx=True):
        if any(isinstance(t, (bool, float)) or not isinstance(t, (int, np.integer)) for t in ids):
            raise ValueError(f"token ids must be ints, got {[type(t).__name__ for t in ids][:3]}")
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("empty prompt: need at least one token")
        if check_ctx and self.pos + len(ids) > self.n_ctx:
            raise ValueError(f"prompt too long: {len(ids)} tokens at position {self.pos} exceed the "
                             f"context of {self.n_ctx} tokens")
        bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} outside the vocabulary 0..{self.cfg.vocab_size - 1}")
        return ids

    def _view(self, m):
        v = self._views.get(m)
        if v is None:
            v = self._views[m] = _Views(self, m)
        return v

    def _forward(self, ids, all_logits):
        if self.engine == "numpy":
            return self._forward_numpy(ids, all_logits)
        m = len(ids)
        sel = np.arange(m) if all_logits else np.array([m - 1])
        out = self._run(ids, np.zeros(m, np.int64), self.pos + np.arange(m), sel, self.auto if m == 1 else None)
        self.pos += m
        return out

    def _run(self, ids, slots, positions, sel, auto):
        m, k = len(ids), len(sel)
        if auto is not None:
            self.threads = auto.next()
        elif self.auto is not None:
            self.threads = self.auto.current
        key = (m, k, self.threads)
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = self._build_program(m, k)
        self._ids[:m] = ids
        self._rows[:m, 0] = slots
        self._rows[:m, 1] = positions
        self._sel[:k] = sel
        if auto is not None:
            t0 = time.perf_counter()
            prog.run()
            auto.record(time.perf_counter() - t0)
        else:
            prog.run()
        out = self._logits[:k]
        cap = self.cfg.final_softcap
        if cap:                                   # Gemma-2: logits = cap * tanh(logits / cap)
            out /= np.float32(cap)
            np.tanh(out, out=out)
            out *= np.float32(cap)
        return out

    def _build_program(self, m, k) -> LaunchProgram:
        """Every launch of one forward pass over m rows (logits for k of them), bound to the buffers."""
        c, thr, V, kern = self.cfg, self.threads, self._view(m), self._kern
        one = 1 if m <= _SMALL_M else thr   # small steps of a decode batch do not pay a dispatch
        H, eps, nqkv = c.hidden_size, c.rms_norm_eps, c.q_size + 2 * c.kv_size
        steps = [(kern["embed"].bind((m,), [self._ids, self._embed_run, self._h, H]), one)]

        def norm(w, add):
            return (kern["rms_add" if add else "rms"].bind((m,), [self._h, self._o, w, self._xn, H, eps]), one)

        def norm_o(w):                      # Gemma: the attention / MLP output is normed before the residual
            return (kern["rms"].bind((m,), [self._o, self._o, w, self._o, H, eps]), one)
        steps.append(norm(self.layers[0].ln1, False))
        for i, (L, (qkv, o, gu, down)) in enumerate(zip(self.layers, V.launches)):
            steps += [(qkv[0], one), (qkv[1], thr)]
            if L.bias is not None:
                steps.append((kern["bias_add"].bind((m, -(-nqkv // _SILU_BLOCK)), [self._qkv, L.bias, nqkv]), one))
            cos, sin = (self.cos_local, self.sin_local) if L.local else (self.cos, self.sin)
            steps.append((kern["rope_kv"].bind((m, c.num_heads + c.num_kv_heads),
                                               [self._qkv, cos, sin, L.k_cache, L.v_cache, self._rows, nqkv,
                                                self.n_ctx, L.qn, L.kn, eps]), one))
            steps.append((kern["attention"].bind((m, c.num_kv_heads),
                                                 [self._qkv, L.k_cache, L.v_cache, self._attn, self._attn_scores,
                                                  self._rows, nqkv, self.n_ctx, self.scale, L.window,
                                                  c.attn_softcap or 1.0]), thr))
            steps += [(o[0], one), (o[1], thr)]
            if L.post_attn is not None:
                steps.append(norm_o(L.post_attn))
            steps += [norm(L.ln2, True), (gu[0], one), (gu[1], thr)]
            steps.append((kern["silu_mul"].bind((m, -(-c.intermediate_size // _SILU_BLOCK)),
                                                [self._gu, self._act, c.intermediate_size]), one))
            steps += [(down[0], one), (down[1], thr)]
            if L.post_mlp is not None:
                steps.append(norm_o(L.post_mlp))
            steps.append(norm(self.layers[i + 1].ln1 if i + 1 < len(self.layers) else self._norm_run, True))
        if k:                                   # gather the rows whose logits are wanted, then lm_head
            steps.append((kern["embed"].bind((k,), [self._sel, self._xn, self._xsel, H]), one))
            lm = self.lm_head.bind(self._xsel, self._logits, k)
            steps += [(lm[0], 1 if k <= _SMALL_M else thr), (lm[1], thr)]
        return LaunchProgram(steps)

    def _forward_numpy(self, ids, all_logits):
        c, m, pos, thr = self.cfg, len(ids), self.pos, self.threads
        V = self._view(m)
        np.take(self.embed, ids, axis=0, out=V.h)
        cos, sin = self.cos[pos:pos + m, None, :], self.sin[pos:pos + m, None, :]
        eps, L_end = c.rms_norm_eps, pos + m
        for L, (qkv, o, gu, down) in zip(self.layers, V.launches):
            _rmsnorm(V.h, L.ln1, eps, V.xn)
            qkv[0](thr), qkv[1](thr)
            # RoPE (rotate-half form) on q and k heads together
            np.multiply(V.qk_b, sin, out=V.t1)
            np.multiply(V.qk_a, sin, out=V.t2)
            V.qk_a *= cos
            V.qk_a -= V.t1
            V.qk_b *= cos
            V.qk_b += V.t2
            L.k_cache[0, :, pos:L_end] = V.k.transpose(1, 0, 2)
            L.v_cache[0, :, pos:L_end] = V.v.transpose(1, 0, 2)
            self._attention(L, V, pos, m)
            o[0](thr), o[1](thr)
            V.h += V.o
            _rmsnorm(V.h, L.ln2, eps, V.xn)
            gu[0](thr), gu[1](thr)
            _silu_mul(V.gate, V.up, V.act)
            down[0](thr), down[1](thr)
            V.h += V.o
        self.pos = L_end
        rows = m if all_logits else 1
        _rmsnorm(V.h[m - rows:], self.norm, eps, self._xn[:rows] if rows == m else self._xn[m - 1:m])
        src = 0 if rows == m else m - 1
        key = (rows, src)
        lm = self._lm_launch.get(key)
        if lm is None:
            lm = self._lm_launch[key] = self.lm_head.bind(self._xn[src:], self._logits, rows)
        lm[0](thr), lm[1](thr)
        return self._logits[:rows]

    def _attention(self, L, V, pos, m):
        c = self.cfg
        kv, rep, n = c.num_kv_heads, c.num_heads // c.num_kv_heads, pos + m
        K, Vc = L.k_cache[0, :, :n], L.v_cache[0, :, :n]
        if m == 1:
            q = V.q[0].reshape(kv, rep, c.head_dim)
            s = self._scores[:, :, :n]
            np.matmul(q, K.transpose(0, 2, 1), out=s)
            s *= self.scale
            s -= s.max(-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(-1, keepdims=True)
            np.matmul(s, Vc, out=V.attn[0].reshape(kv, rep, c.head_dim))
            return
        q = V.q.reshape(m, kv, rep, c.head_dim).transpose(1, 2, 0, 3)          # (kv, rep, m, d)
        s = np.matmul(q, K.transpose(0, 2, 1)[:, None]) * self.scale           # (kv, rep, m, n)
        causal = np.arange(n)[None, :] > (pos + np.arange(m))[:, None]
        s[..., causal] = -np.inf
        s -= s.max(-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(-1, keepdims=True)
        out = np.matmul(s, Vc[:, None])                                          # (kv, rep, m, d)
        V.attn.reshape(m, kv, rep, c.head_dim)[:] = out.transpose(2, 0, 1, 3)


_SILU_BLOCK = 256
_SMALL_M = 8           # up to this many rows, tables, norms, RoPE and the MLP gate run on the calling thread


class _Release:
    """Context manager releasing an already-acquired lock."""

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _glue_kernels(c: DecoderConfig) -> dict:
    """Compile (or load from the disk cache) the non-GEMM kernels for this model's shapes."""
    heads = dict(NH=c.num_heads, NKV=c.num_kv_heads, HD=c.head_dim)
    return dict(embed=K.compiled("embed", BLOCK=64), rms=K.compiled("add_rmsnorm", BLOCK=64, ADD=False),
                rms_add=K.compiled("add_rmsnorm", BLOCK=64, ADD=True),
                rope_kv=K.compiled("rope_kv", QKN=c.qk_norm, **heads),
                attention=K.compiled("attention", BT=16, CAP=bool(c.attn_softcap), **heads),
                silu_mul=K.compiled("silu_mul", BLOCK=_SILU_BLOCK, GELU=c.act == "gelu_tanh"),
                bias_add=K.compiled("bias_add", BLOCK=_SILU_BLOCK))


def _rmsnorm(x, w, eps, out):
    if x.shape[0] == 1:
        inv = 1.0 / math.sqrt(float(np.dot(x[0], x[0])) / x.shape[1] + eps)
        np.multiply(x, np.float32(inv), out=out)
    else:
        var = np.einsum("ij,ij->i", x, x) / np.float32(x.shape[1])
        np.multiply(x, (1.0 / np.sqrt(var + np.float32(eps)))[:, None].astype(np.float32), out=out)
    out *= w


def _silu_mul(g, u, out):
    np.negative(g, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.divide(g, out, out=out)
    out *= u


