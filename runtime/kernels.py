"""The decoder's non-GEMM steps as lutc DSL kernels: embedding, RMSNorm, RoPE + KV write, attention, SiLU gate."""
from __future__ import annotations

import lutc.language as tl
from lutc.jitfunction import jit


@jit
def _exp(x):
    """e**x for a float32 block: 2**n * poly(r), r = x - n*ln2 in [-ln2/2, ln2/2]; ~1e-7 relative error."""
    x = tl.minimum(tl.maximum(x, -87.0), 88.0)
    n = tl.floor(x * 1.4426950408889634 + 0.5)
    r = x - n * 0.693145751953125 - n * 1.428606765330187e-06
    p = 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    two_n = tl.bitcast((n.to(tl.int32) + 127) << 23, tl.float32)
    return p * two_n


@jit
def _tanh(x):
    """tanh for a float32 block via _exp: 1 - 2 / (e**2x + 1)."""
    return 1.0 - 2.0 / (_exp(2.0 * x) + 1.0)


@jit
def embed(ids, table, h, H, BLOCK: tl.constexpr):
    """h[m] = table[ids[m]]; one program per row."""
    m = tl.program_id(0)
    src = table + tl.load(ids + m).to(tl.int64) * H
    for k0 in range(0, H, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        msk = offs < H
        tl.store(h + m * H + offs, tl.load(src + offs, mask=msk), mask=msk)


@jit
def add_rmsnorm(h, d, w, out, H, eps, BLOCK: tl.constexpr, ADD: tl.constexpr):
    """(ADD: h[m] += d[m]), then out[m] = h[m] / rms(h[m]) * w; one program per row."""
    m = tl.program_id(0)
    row = h + m * H
    ss = tl.zeros((BLOCK,), tl.float32)
    for k0 in range(0, H, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        msk = offs < H
        x = tl.load(row + offs, mask=msk)
        if ADD:
            x = x + tl.load(d + m * H + offs, mask=msk)
            tl.store(row + offs, x, mask=msk)
        ss += x * x
    inv = 1.0 / tl.sqrt(tl.sum(ss) / H + eps)
    for k0 in range(0, H, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        msk = offs < H
        x = tl.load(row + offs, mask=msk)
        tl.store(out + m * H + offs, x * inv * tl.load(w + offs, mask=msk), mask=msk)


@jit
def rope_kv(qkv, cos, sin, kc, vc, rows, NQKV, NCTX, qn, kn, eps,
            NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, QKN: tl.constexpr):
    """Rotate q head h of row m (in place) or k head h - NH (into the K cache, with its v head into
    the V cache) at the row's own sequence slot and position: rows[m] = (slot, pos).
    QKN: RMSNorm each head first, with weights qn (q heads) or kn (k heads) of HD each."""
    m = tl.program_id(0)
    h = tl.program_id(1)
    HALF: tl.constexpr = HD // 2
    slot = tl.load(rows + 2 * m).to(tl.int64)
    pos = tl.load(rows + 2 * m + 1)
    i = tl.arange(0, HALF)
    c = tl.load(cos + pos * HALF + i)
    s = tl.load(sin + pos * HALF + i)
    base = qkv + m * NQKV + h * HD
    a = tl.load(base + i)
    b = tl.load(base + HALF + i)
    if QKN:
        inv = 1.0 / tl.sqrt((tl.sum(a * a) + tl.sum(b * b)) / HD + eps)
        if h < NH:
            a = a * inv * tl.load(qn + i)
            b = b * inv * tl.load(qn + HALF + i)
        else:
            a = a * inv * tl.load(kn + i)
            b = b * inv * tl.load(kn + HALF + i)
    ra = a * c - b * s
    rb = b * c + a * s
    if h < NH:
        tl.store(base + i, ra)
        tl.store(base + HALF + i, rb)
    else:
        kh = h - NH
        off = ((slot * NKV + kh) * NCTX + pos) * HD
        tl.store(kc + off + i, ra)
        tl.store(kc + off + HALF + i, rb)
        d = tl.arange(0, HD)
        tl.store(vc + off + d, tl.load(qkv + m * NQKV + (NH + NKV + kh) * HD + d))


@jit
def attention(qkv, kc, vc, out, scores, rows, NQKV, NCTX, scale, WIN, cap,
              NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, BT: tl.constexpr, CAP: tl.constexpr):
    """Causal GQA for row m and kv head g: the NH/NKV query heads of g over the positions of the row's
    slot up to its own (rows[m] = (slot, pos)); WIN > 0 keeps only the last WIN positions (sliding window);
    CAP: scores soft-capped to cap * tanh(score / cap) (Gemma-2)."""
    m = tl.program_id(0)
    g = tl.program_id(1)
    REP: tl.constexpr = NH // NKV
    slot = tl.load(rows + 2 * m).to(tl.int64)
    n = tl.load(rows + 2 * m + 1) + 1
    t_lo = 0
    if WIN > 0:
        t_lo = tl.maximum(n - WIN, 0)
    d = tl.arange(0, HD)
    kbase = kc + (slot * NKV + g) * NCTX * HD
    vbase = vc + (slot * NKV + g) * NCTX * HD
    for r in tl.static_range(REP):
        hq = g * REP + r
        q = tl.load(qkv + m * NQKV + hq * HD + d) * scale
        srow = scores + ((m * NKV + g) * REP + r) * NCTX
        mx = -3.0e38
        for t in range(t_lo, n):
            s = tl.sum(q * tl.load(kbase + t * HD + d))
            tl.store(srow + t, s)
            mx = tl.maximum(mx, s)
        if CAP:
            mxv = tl.full((BT,), -3.0e38, tl.float32)
            for t0 in range(t_lo, n, BT):
                offs = t0 + tl.arange(0, BT)
                msk = offs < n
                sc = cap * _tanh(tl.load(srow + offs, mask=msk) / cap)
                tl.store(srow + offs, sc, mask=msk)
                mxv = tl.maximum(mxv, tl.where(msk, sc, -3.0e38))
            mx = tl.max(mxv)
        tot = tl.zeros((BT,), tl.float32)
        for t0 in range(t_lo, n, BT):
            offs = t0 + tl.arange(0, BT)
            msk = offs < n
            e = tl.where(msk, _exp(tl.load(srow + offs, mask=msk) - mx), 0.0)
            tl.store(srow + offs, e, mask=msk)
            tot += e
        inv = 1.0 / tl.sum(tot)
        acc = tl.zeros((HD,), tl.float32)
        for t in range(t_lo, n):
            acc += tl.load(srow + t) * tl.load(vbase + t * HD + d)
        tl.store(out + m * (NH * HD) + hq * HD + d, acc * inv)


@jit
def silu_mul(gu, act, F, BLOCK: tl.constexpr, GELU: tl.constexpr):
    """act[m] = silu(gate[m]) * up[m] (GELU: gelu_tanh(gate[m]) * up[m]), where gu[m] = [gate | up];
    programs over (row, block)."""
    m = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    msk = offs < F
    g = tl.load(gu + m * 2 * F + offs, mask=msk)
    u = tl.load(gu + m * 2 * F + F + offs, mask=msk)
    if GELU:
        tl.store(act + m * F + offs, 0.5 * g * (1.0 + _tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) * u,
                 mask=msk)
    else:
        tl.store(act + m * F + offs, g / (1.0 + _exp(-g)) * u, mask=msk)


@jit
def bias_add(y, b, N, BLOCK: tl.constexpr):
    """y[m, :N] += b; programs over (row, block)."""
    m = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    msk = offs < N
    tl.store(y + m * N + offs, tl.load(y + m * N + offs, mask=msk) + tl.load(b + offs, mask=msk), mask=msk)


_F32P, _I32P, _I32, _F32 = "*f32", "*i32", "i32", "f32"
SIGNATURES = {
    "embed": (embed, dict(ids=_I32P, table=_F32P, h=_F32P, H=_I32), 1),
    "add_rmsnorm": (add_rmsnorm, dict(h=_F32P, d=_F32P, w=_F32P, out=_F32P, H=_I32, eps=_F32), 1),
    "rope_kv": (rope_kv, dict(qkv=_F32P, cos=_F32P, sin=_F32P, kc=_F32P, vc=_F32P, rows=_I32P,
                              NQKV=_I32, NCTX=_I32, qn=_F32P, kn=_F32P, eps=_F32), 2),
    "attention": (attention, dict(qkv=_F32P, kc=_F32P, vc=_F32P, out=_F32P, scores=_F32P, rows=_I32P,
                                  NQKV=_I32, NCTX=_I32, scale=_F32, WIN=_I32, cap=_F32), 2),
    "silu_mul": (silu_mul, dict(gu=_F32P, act=_F32P, F=_I32), 2),
    "bias_add": (bias_add, dict(y=_F32P, b=_F32P, N=_I32), 2),
}


def compiled(name: str, **constexprs):
    """The CompiledFunction of kernel `name` for these constexprs (memory and disk cached)."""
    fn, sig, rank = SIGNATURES[name]
    return fn.compile(sig, constexprs, rank)
