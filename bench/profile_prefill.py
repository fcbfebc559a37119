"""Where a prefill's time goes: every launch of the m-row step program of one sequence, timed one
by one, grouped per linear (act quantization `xq`, GEMM), attention, norms/RoPE, glue, lm_head,
next to the whole program's native time and the Python wall time of `prefill`.

Usage: python bench/profile_prefill.py [--models smollm2,llama7b] [--bits 2,4] [--tokens 128,512]
       [--threads 1,2] [--reps 3] [--target host] [--out FILE]
A prompt of T tokens runs as chunks of the decoder's max_prefill (128) rows; each chunk is profiled
at its own position (attention grows with it) and the chunks are summed. The dot GEMMs' achieved
int8 rate (GOP/s, 2 ops per multiply-add, the activation residual's second dot counted) is
reported per linear. Writes bench/results/profile_prefill.json by default.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, conditions, write_json  # noqa: E402

LINEARS = ("qkv", "o", "gate_up", "down")


def label(launch):
    """The group of one launch (None: a linear's quantize or GEMM launch)."""
    n = launch.name
    if n in ("add_rmsnorm", "rope_kv"):
        return "norm_rope"
    if n == "attention":
        return "attention"
    if n in ("tables", "quantize_x", "gemm", "dot_gemm", "lut_gemm"):
        return None
    return "glue"


def profile_chunk(dec, m, pos, reps):
    """Median ms per group of a forward pass of m rows of slot 0 at positions pos.. (no logits but the last)."""
    import numpy as np
    rows = (np.zeros(m, np.int64), pos + np.arange(m), [5] * m, [m - 1])
    dec.forward_batch(*rows)
    prog = dec._programs[(m, 1, dec.threads)]
    recs = list(zip(prog.launches, prog.records[:, 3]))
    n_lm = 2
    names, gi = [], 0
    for i, (launch, _) in enumerate(recs):
        if i >= len(recs) - n_lm:
            names.append("lm_head")
            continue
        g = label(launch)
        if g is None:                           # quantize / GEMM launches come in pairs per linear
            lin = LINEARS[(gi // 2) % 4]
            g = f"{lin}.{'gemm' if gi % 2 else 'xq'}"
            gi += 1
        names.append(g)
    groups = {}
    for _ in range(reps):
        tot = {}
        for (launch, thr), g in zip(recs, names):
            t = time.perf_counter()
            launch(int(thr))
            tot[g] = tot.get(g, 0.0) + time.perf_counter() - t
        for g, v in tot.items():
            groups.setdefault(g, []).append(v)
    whole = []
    for _ in range(reps):
        t = time.perf_counter()
        prog.run()
        whole.append(time.perf_counter() - t)
    out = {g: 1e3 * statistics.median(v) for g, v in groups.items()}
    out["program"] = 1e3 * statistics.median(whole)
    return out


def gemm_ops(cfg, m):
    """int8 ops (2 per multiply-add) of each linear's GEMM over all layers at m rows, without the residual."""
    H, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    nqkv = cfg.q_size + 2 * cfg.kv_size
    return {"qkv": 2 * m * nqkv * H * L, "o": 2 * m * H * cfg.q_size * L, "gate_up": 2 * m * 2 * F * H * L,
            "down": 2 * m * H * F * L}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,llama7b")
    ap.add_argument("--bits", default="2,4")
    ap.add_argument("--tokens", default="128,512")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "profile_prefill.json"))
    args = ap.parse_args()
    from bench.bench_e2e import lutc_decoder
    threads = [int(t) for t in args.threads.split(",")]
    toks = [int(t) for t in args.tokens.split(",")]
    res = dict(conditions=conditions(), rows=[])
    for model in args.models.split(","):
        for bits in [int(b) for b in args.bits.split(",")]:
            dec, _ = lutc_decoder(model, bits, max(toks) + 8, threads[0])
            for thr in threads:
                dec.set_threads(thr)
                for T in toks:
                    tot = {}
                    for pos in range(0, T, dec.max_prefill):
                        m = min(dec.max_prefill, T - pos)
                        for g, v in profile_chunk(dec, m, pos, args.reps).items():
                            tot[g] = tot.get(g, 0.0) + v
                    dec.pos = 0
                    t = time.perf_counter()
                    dec.prefill([5] * T)
                    tot["prefill_wall"] = 1e3 * (time.perf_counter() - t)
                    dec.pos = 0
                    ops = gemm_ops(dec.cfg, T)
                    gops = {lin: ops[lin] / (tot[f"{lin}.gemm"] * 1e6) for lin in LINEARS}
                    row = dict(model=model, bits=bits, threads=thr, tokens=T, ms=tot, gemm_gops=gops,
                               prefill_tps=T / (tot["prefill_wall"] / 1e3))
                    res["rows"].append(row)
                    gsum = sum(tot[f"{lin}.gemm"] for lin in LINEARS)
                    xsum = sum(tot[f"{lin}.xq"] for lin in LINEARS)
                    print(f"{model} W{bits} {thr}T T={T}: wall {tot['prefill_wall']:.1f} ms ({row['prefill_tps']:.1f} tok/s) "
                          f"program {tot['program']:.1f} | gemm {gsum:.1f} xq {xsum:.1f} attn {tot.get('attention', 0):.1f} "
                          f"norm_rope {tot.get('norm_rope', 0):.1f} glue {tot.get('glue', 0):.1f} lm_head {tot['lm_head']:.1f} | "
                          + " ".join(f"{lin} {tot[lin + '.gemm']:.1f}ms/{gops[lin]:.0f}GOPs" for lin in LINEARS), flush=True)
            del dec
    res["conditions_end"] = conditions()
    write_json(args.out, res)


if __name__ == "__main__":
    main()
