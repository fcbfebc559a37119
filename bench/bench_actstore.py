"""Streaming memory with and without calibration activations on disk (quant.actstore), on the
16-block test model of tests/test_stream.py (hidden 512, FFN 1376, vocab 512, 102 MB of F16).

    PYTHONPATH=$PWD nice -n 10 python bench/bench_actstore.py /tmp/m16 bench/results/actstore_stream.json [/work/main]

Each run is bench_stream.run_limited (a child process, RssAnon sampled every 50 ms, no limit):
W2 g64, 8 x 128 random calibration token ids, offload_dir None or set; with a third argument,
the offloaded hlq-gptq and hlq-ft runs are repeated with that source tree on PYTHONPATH (the
former code: codes offloaded, activations in memory). One JSON line per run on stdout.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_stream  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(model_dir, out, former=None) -> int:
    model_dir, out = os.path.abspath(model_dir), os.path.abspath(out)
    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        from quant.synthetic import write_synthetic_llama
        write_synthetic_llama(model_dir, hidden=512, inter=1376, layers=16, heads=8, kv_heads=8, vocab=512)
    size = os.path.getsize(os.path.join(model_dir, "model.safetensors"))
    runs = [(HERE, m, off) for m in ("rtn", "hlq", "hlq-gptq") for off in (False, True)]
    runs += [(HERE, "hlq-ft", True), (HERE, "hlq-ft", False)]
    if former:
        runs += [(former, "hlq-gptq", True), (former, "hlq-ft", True)]
    results = []
    for tree, method, off in runs:
        env = dict(os.environ, PYTHONPATH=tree)
        os.chdir(tree)  # the child's `python -c` puts the working directory first on sys.path
        l0 = os.getloadavg()
        r = bench_stream.run_limited(model_dir, method, 2, 64, env=env,
                                     offload=os.path.join(model_dir + "-codes", method) if off else None)
        r.update(tree=tree, method=method, offload=off, weights_bytes=size,
                 limit_delta_8_of_13_5=int(size * 8 / 13.5), load_before=[round(x, 2) for x in l0],
                 load_after=[round(x, 2) for x in os.getloadavg()],
                 delta_mb=round((r.get("peak_rss_anon", 0) - r.get("baseline_rss_anon", 0)) / 1e6, 1))
        print(json.dumps(r), flush=True)
        results.append(r)
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
