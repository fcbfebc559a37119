"""Interleaved decode tok/s of table configurations on the same packed weights (LeanDecoder).

Usage: python bench/bench_table_decode.py MODELS ROUNDS STEPS [W4_CKPT W2_CKPT]
MODELS: smollm2 and/or llama7b (random 7B-shaped model). SmolLM2 checkpoints: the given W4 / W2
checkpoint directories, else bench_e2e's SmolLM2 (RTN, g128: the speed does not depend on the
weights' values). Prints same-run ratios (tok/s of each configuration / tok/s of the old int8
tables); the configurations are timed round-robin, each round in a shuffled order. Statistic:
the 10th percentile of all step times of a configuration (on a loaded machine the low quantiles
estimate the uncontended time; medians scatter by +-20%)."""
import sys, time, json, numpy as np
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from runtime import LeanDecoder
import quant
from bench.bench_e2e import lutc_model
CFG = [("old group raw", dict(lut_scale_block=1 << 30, lut_centered=False, lut_fine_planes=0)),
       ("c32 float", dict(lut_scale_block=32, lut_scale_ratio=0, lut_fine_planes=0)),
       ("c32 int", dict(lut_scale_block=32, lut_scale_ratio=64, lut_fine_planes=0)),
       ("c16 int", dict(lut_scale_block=16, lut_scale_ratio=64, unroll=2, lut_fine_planes=0)),
       ("c8 int", dict(lut_scale_block=8, lut_scale_ratio=64, unroll=1, lut_fine_planes=0))]
models = sys.argv[1].split(",")
rounds, steps = int(sys.argv[2]), int(sys.argv[3])
CKPT = {4: sys.argv[4] if len(sys.argv) > 4 else None, 2: sys.argv[5] if len(sys.argv) > 5 else None}
order = np.random.default_rng(0)
out = {}
for fam in models:
    for bits in (4, 2):
        if fam == "smollm2" and CKPT[bits]:
            qm = quant.load_checkpoint(CKPT[bits])
        else:
            qm = lutc_model(fam, bits)
        base = LeanDecoder(qm, n_ctx=256, threads=1)
        pm = base.to_packed_model(); del qm
        decs = [LeanDecoder(pm, n_ctx=256, threads=1, knobs=k) for _, k in CFG]
        for thr in (1, 2):
            for d in decs: d.set_threads(thr)
            ts = [[] for _ in decs]
            for r in range(rounds):
                for i in order.permutation(len(decs)):
                    d = decs[i]
                    d.reset(); d.prefill([5, 6, 7, 8])
                    st = []
                    for _ in range(steps):
                        t0 = time.perf_counter(); d.decode(9); st.append(time.perf_counter() - t0)
                    ts[i].extend(st)
            med = [float(np.percentile(t, 10)) for t in ts]
            key = f"{fam} W{bits} t{thr}"
            out[key] = {lab: med[0] / m for (lab, _), m in zip(CFG, med)}
            out[key]["old_tok_s"] = 1 / med[0]
            ratios = "  ".join(f"{lab}={med[0] / m:.3f}x" for (lab, _), m in zip(CFG, med))
            print(key, f"old {1 / med[0]:.1f} tok/s;", ratios, flush=True)
        del decs, base, pm
print(json.dumps(out, indent=1))
