"""LeanDecoder: a LLaMA-family decoder whose every linear layer is a lutc kernel, run as one native program per step."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
from lutc.launcher import LaunchProgram, default_threads, resolve_threads

from . import kernels as K
from .config import FUSED, DecoderConfig, UnsupportedModelError, layer_names
from .linear import LinearWeights, concat_rows
from .packcache import PackedModel


class _Layer:
    __slots__ = ("qkv", "o", "gu", "down", "ln1", "ln2", "k_cache", "v_cache")


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
    """

    def __init__(self, qm, n_ctx: int | None = None, threads: int | None = None, lut_dtype: str | None = None,
                 max_prefill: int = 128, engine: str = "native", knobs: dict | None = None):
        if engine not in ("native", "numpy"):
            raise ValueError(f"engine: expected 'native' or 'numpy', got {engine!r}")
        self.engine = engine
        self.cfg = c = DecoderConfig.from_hf(qm.config)
        self.auto = _AutoThreads() if threads == "auto" else None
        self.threads = self.auto.current if self.auto else resolve_threads(threads)
        self.n_ctx = int(n_ctx or min(c.max_position_embeddings, 2048))
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx: expected >= 1, got {n_ctx}")
        self.max_prefill = max(1, min(int(max_prefill), self.n_ctx))
        self.meta = dict(qm.meta)
        self.config_dict = dict(qm.config)
        self.tokenizer_dir = qm.tokenizer_dir
        prepacked = qm.packed if isinstance(qm, PackedModel) else None
        if prepacked is None:
            _check_model(qm, c)
        else:
            _check_packed(qm, c)
        mm = self.max_prefill
        self.layers = []
        for i in range(c.num_layers):
            n, L = layer_names(i), _Layer()
            if prepacked is not None:
                L.qkv, L.o, L.gu, L.down = (LinearWeights(prepacked[f"{i}.{k}"], mm, lut_dtype, f"{i}.{k}", knobs)
                                            for k in FUSED)
            else:
                lin = qm.linears
                L.qkv = LinearWeights(concat_rows([lin[n["q"]], lin[n["k"]], lin[n["v"]]]), mm, lut_dtype,
                                      n["q"] + "kv", knobs)
                L.o = LinearWeights(lin[n["o"]], mm, lut_dtype, n["o"], knobs)
                L.gu = LinearWeights(concat_rows([lin[n["gate"]], lin[n["up"]]]), mm, lut_dtype,
                                     n["gate"] + "+up", knobs)
                L.down = LinearWeights(lin[n["down"]], mm, lut_dtype, n["down"], knobs)
            L.ln1 = qm.tensors[n["ln1"]]
            L.ln2 = qm.tensors[n["ln2"]]
            L.k_cache = np.zeros((c.num_kv_heads, self.n_ctx, c.head_dim), np.float32)
            L.v_cache = np.zeros((c.num_kv_heads, self.n_ctx, c.head_dim), np.float32)
            self.layers.append(L)
        self.lm_head = LinearWeights(prepacked["lm_head"] if prepacked is not None else qm.linears["lm_head"],
                                   mm, lut_dtype, "lm_head", knobs)
        self.lut_dtype = lut_dtype
        self.embed = qm.tensors["model.embed_tokens.weight"]
        self.norm = qm.tensors["model.norm.weight"]
        self.cos, self.sin = c.rope_tables(self.n_ctx)
        H, F = c.hidden_size, c.intermediate_size
        z = lambda cols: np.zeros((mm, cols), np.float32)  # noqa: E731
        self._h, self._xn, self._o, self._attn = z(H), z(H), z(H), z(c.q_size)
        self._qkv, self._gu, self._act = z(c.q_size + 2 * c.kv_size), z(2 * F), z(F)
        half = c.head_dim // 2
        self._t1 = np.zeros((mm, c.num_heads + c.num_kv_heads, half), np.float32)
        self._t2 = np.zeros_like(self._t1)
        self._logits = z(c.vocab_size)
        self._scores = np.zeros((c.num_kv_heads, c.num_heads // c.num_kv_heads, self.n_ctx), np.float32)
        self._views = {}
        self._lm_launch = {}
        self._programs = {}
        self._ids = np.zeros(mm, np.int32)
        self._state = np.zeros(4, np.int32)                     # [0] = position of the chunk's first token
        self._attn_scores = np.zeros(mm * c.num_heads * self.n_ctx, np.float32)
        self.pos = 0
        self.scale = 1.0 / math.sqrt(c.head_dim)
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
            n = layer_names(i)
            tensors[n["ln1"]], tensors[n["ln2"]] = L.ln1, L.ln2
        packed["lm_head"] = self.lm_head.packed
        tensors["model.embed_tokens.weight"], tensors["model.norm.weight"] = self.embed, self.norm
        return PackedModel(self.config_dict, tensors, packed, self.tokenizer_dir, self.meta)

    def reset(self):
        self.pos = 0

    def set_threads(self, threads):
        """Change the native thread count: an int >= 1, or "auto" (re-chosen from measured steps)."""
        self.auto = _AutoThreads() if threads == "auto" else None
        self.threads = self.auto.current if self.auto else resolve_threads(threads)

    def prefill(self, ids, all_logits: bool = False) -> np.ndarray:
        """Run the tokens `ids` from the current position; logits of the last one (V,) or of all (M, V)."""
        ids = self._check_ids(ids)
        outs = []
        with self._exclusive():
            for s in range(0, len(ids), self.max_prefill):
                chunk = ids[s:s + self.max_prefill]
                out = self._forward(chunk, all_logits)
                outs.append(out.copy() if all_logits else out)
        return np.concatenate(outs, 0) if all_logits else outs[-1][-1].copy()

    def decode(self, token: int) -> np.ndarray:
        """One token at the current position; returns its logits (V,), a view valid until the next call."""
        if self.pos >= self.n_ctx:
            raise ValueError(f"context full: {self.n_ctx} tokens (raise n_ctx)")
        ids = self._check_ids([token])
        with self._exclusive():
            return self._forward(ids, False)[0]

    # ------------------------------------------------------------------ internals
    def _exclusive(self):
        """The decoder's lock, refused (not waited for) if another thread is in a forward pass."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("LeanDecoder is running a forward pass in another thread; a decoder serves "
                               "one thread at a time (use one decoder per thread)")
        return _Release(self._busy)

    def _check_ids(self, ids):
        if any(isinstance(t, (bool, float)) or not isinstance(t, (int, np.integer)) for t in ids):
            raise ValueError(f"token ids must be ints, got {[type(t).__name__ for t in ids][:3]}")
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("empty prompt: need at least one token")
        if self.pos + len(ids) > self.n_ctx:
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
        m, auto = len(ids), self.auto
        if auto is not None and m == 1:
            self.threads = auto.next()
        key = (m, all_logits, self.threads)
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = self._build_program(m, all_logits)
        self._ids[:m] = ids
        self._state[0] = self.pos
        if auto is not None and m == 1:
            t0 = time.perf_counter()
            prog.run()
            auto.record(time.perf_counter() - t0)
        else:
            prog.run()
        self.pos += m
        return self._logits[:m if all_logits else 1]

    def _build_program(self, m, all_logits) -> LaunchProgram:
        """Every launch of one forward pass over m tokens, with argument blocks bound to the buffers."""
        c, thr, V, kern = self.cfg, self.threads, self._view(m), self._kern
        one = 1 if m == 1 else thr          # small steps of a single token do not pay a dispatch
        H, eps, nqkv = c.hidden_size, c.rms_norm_eps, c.q_size + 2 * c.kv_size
        steps = [(kern["embed"].bind((m,), [self._ids, self.embed, self._h, H]), one)]

        def norm(w, add):
            return (kern["rms_add" if add else "rms"].bind((m,), [self._h, self._o, w, self._xn, H, eps]), one)
        steps.append(norm(self.layers[0].ln1, False))
        for i, (L, (qkv, o, gu, down)) in enumerate(zip(self.layers, V.launches)):
            steps += [(qkv[0], one), (qkv[1], thr)]
            steps.append((kern["rope_kv"].bind((m, c.num_heads + c.num_kv_heads),
                                               [self._qkv, self.cos, self.sin, L.k_cache, L.v_cache,
                                                self._state, nqkv, self.n_ctx]), one))
            steps.append((kern["attention"].bind((m, c.num_kv_heads),
                                                 [self._qkv, L.k_cache, L.v_cache, self._attn, self._attn_scores,
                                                  self._state, nqkv, self.n_ctx, self.scale]), thr))
            steps += [(o[0], one), (o[1], thr), norm(L.ln2, True), (gu[0], one), (gu[1], thr)]
            steps.append((kern["silu_mul"].bind((m, -(-c.intermediate_size // _SILU_BLOCK)),
                                                [self._gu, self._act, c.intermediate_size]), one))
            steps += [(down[0], one), (down[1], thr)]
            steps.append(norm(self.layers[i + 1].ln1 if i + 1 < len(self.layers) else self.norm, True))
        rows = m if all_logits else 1
        lm = self.lm_head.bind(self._xn[m - rows:], self._logits, rows)
        steps += [(lm[0], one), (lm[1], thr)]
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
            L.k_cache[:, pos:L_end] = V.k.transpose(1, 0, 2)
            L.v_cache[:, pos:L_end] = V.v.transpose(1, 0, 2)
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
        K, Vc = L.k_cache[:, :n], L.v_cache[:, :n]
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


class _Release:
    """Context manager releasing an already-acquired lock."""

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lock.release()


class _AutoThreads:
    """threads="auto": decode steps alternate short trials of 1..ncores threads, then run the one
    with the lowest median step time for a while, and re-measure (on a shared machine the best
    count changes with the load: a preempted pool worker stalls every parallel launch)."""

    TRIAL, RUN = 6, 250

    def __init__(self):
        self.options = list(range(default_threads(), 0, -1))
        self.current, self.times, self.step = self.options[0], {}, 0

    def next(self) -> int:
        cycle = self.TRIAL * len(self.options) + self.RUN
        i = self.step % cycle
        self.step += 1
        if i < self.TRIAL * len(self.options):
            self.current = self.options[i % len(self.options)]
            self.exploring = True
        else:
            if i == self.TRIAL * len(self.options):
                self.current = min(self.times, key=lambda t: sorted(self.times[t])[len(self.times[t]) // 2])
                self.times = {}
            self.exploring = False
        return self.current

    def record(self, seconds):
        if self.exploring:
            self.times.setdefault(self.current, []).append(seconds)


def _glue_kernels(c: DecoderConfig) -> dict:
    """Compile (or load from the disk cache) the non-GEMM kernels for this model's shapes."""
    heads = dict(NH=c.num_heads, NKV=c.num_kv_heads, HD=c.head_dim)
    return dict(embed=K.compiled("embed", BLOCK=64), rms=K.compiled("add_rmsnorm", BLOCK=64, ADD=False),
                rms_add=K.compiled("add_rmsnorm", BLOCK=64, ADD=True), rope_kv=K.compiled("rope_kv", **heads),
                attention=K.compiled("attention", BT=16, **heads),
                silu_mul=K.compiled("silu_mul", BLOCK=_SILU_BLOCK))


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


def _check_model(qm, c: DecoderConfig):
    missing = []
    for i in range(c.num_layers):
        n = layer_names(i)
        missing += [n[k] for k in ("q", "k", "v", "o", "gate", "up", "down") if n[k] not in qm.linears]
        missing += [n[k] for k in ("ln1", "ln2") if n[k] not in qm.tensors]
    missing += [k for k in ("lm_head",) if k not in qm.linears]
    missing += [k for k in ("model.embed_tokens.weight", "model.norm.weight") if k not in qm.tensors]
    if missing:
        raise UnsupportedModelError(f"checkpoint is missing {len(missing)} LLaMA tensor(s), e.g. {missing[:3]}")
    emb = qm.tensors["model.embed_tokens.weight"]
    if emb.shape != (c.vocab_size, c.hidden_size):
        raise UnsupportedModelError(f"embed_tokens: expected shape {(c.vocab_size, c.hidden_size)}, got {emb.shape}")
    expect = {"q": (c.q_size, c.hidden_size), "k": (c.kv_size, c.hidden_size), "v": (c.kv_size, c.hidden_size),
              "o": (c.hidden_size, c.q_size), "gate": (c.intermediate_size, c.hidden_size),
              "up": (c.intermediate_size, c.hidden_size), "down": (c.hidden_size, c.intermediate_size)}
    for i in range(c.num_layers):
        n = layer_names(i)
        for k, shp in expect.items():
            got = tuple(qm.linears[n[k]].shape)
            if got != shp:
                raise UnsupportedModelError(f"{n[k]}: expected shape {shp}, got {got}")


def _check_packed(pm, c: DecoderConfig):
    """A PackedModel (pack cache) has every matrix and tensor this config needs, of the right shapes."""
    H, V, F = c.hidden_size, c.vocab_size, c.intermediate_size
    fused = dict(qkv=(c.q_size + 2 * c.kv_size, H), o=(H, c.q_size), gate_up=(2 * F, H), down=(H, F))
    want = {f"{i}.{k}": shp for i in range(c.num_layers) for k, shp in fused.items()}
    want["lm_head"] = (V, H)
    tensors = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for i in range(c.num_layers):
        n = layer_names(i)
        tensors[n["ln1"]] = tensors[n["ln2"]] = (H,)
    for key, shp in want.items():
        p = pm.packed.get(key)
        if p is None or (p.N, p.K) != shp:
            raise UnsupportedModelError(f"packed model: {key} should be {shp}, got "
                                        f"{None if p is None else (p.N, p.K)}")
    for name, shp in tensors.items():
        a = pm.tensors.get(name)
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shp:
            raise UnsupportedModelError(f"packed model: {name} should be float32 {shp}, got "
                                        f"{getattr(a, 'dtype', None)} {getattr(a, 'shape', None)}")
