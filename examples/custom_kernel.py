"""Write your own LUT kernel in the lutc DSL: ternary weights {-1, 0, +1} with a fused bias.

Each weight is stored as two bit-planes (plus, minus): w = plus - minus. For every run of
G = 4 activations we build the 16-entry table of subset sums once, then every row's
contribution is table[plus_idx] - table[minus_idx] — no multiplications at all. The bias
add is fused into the store. The result is checked against numpy.

    python examples/custom_kernel.py
"""
import numpy as np

import lutc
import lutc.language as tl


@lutc.jit
def ternary_gemv(x, plus, minus, bias, y, N, K,
                 BN: tl.constexpr, G: tl.constexpr):
    tile = tl.program_id(0)
    rows = tile * BN + tl.arange(0, BN)
    acc = tl.zeros((BN,), tl.float32)
    T = K // G
    for t in range(T):
        table = tl.lut_build(tl.load(x + t * G + tl.arange(0, G)))   # 2**G subset sums
        # plus/minus hold one G-bit index per (table, row), laid out [t][row]
        ip = tl.load(plus + t * N + rows, mask=rows < N)
        im = tl.load(minus + t * N + rows, mask=rows < N)
        acc += tl.lookup(table, ip) - tl.lookup(table, im)
    b = tl.load(bias + rows, mask=rows < N)
    tl.store(y + rows, acc + b, mask=rows < N)


def pack_ternary(w, G=4):
    """w in {-1,0,1}^(N,K) -> per-table indices [t][n] of the +1 and -1 bit-planes."""
    N, K = w.shape
    runs = w.reshape(N, K // G, G)
    weights = 1 << np.arange(G)
    plus = ((runs == 1) * weights).sum(-1).astype(np.uint8).T.copy()
    minus = ((runs == -1) * weights).sum(-1).astype(np.uint8).T.copy()
    return plus, minus


def main():
    rng = np.random.default_rng(0)
    N, K, G, BN = 1000, 512, 4, 32
    w = rng.integers(-1, 2, size=(N, K)).astype(np.int8)
    x = rng.standard_normal(K).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    plus, minus = pack_ternary(w, G)
    y = np.zeros(N, np.float32)
    ternary_gemv[((N + BN - 1) // BN,)](x, plus, minus, bias, y, N, K, BN=BN, G=G, threads=2)
    ref = x @ w.T.astype(np.float32) + bias
    err = np.abs(y - ref).max()
    print(f"ternary GEMV {N}x{K} with fused bias: max |lutc - numpy| = {err:.2e}")
    assert err < 1e-3, err
    compiled = ternary_gemv.compile({"x": "*f32", "plus": "*u8", "minus": "*u8", "bias": "*f32",
                                     "y": "*f32", "N": "i32", "K": "i32"}, {"BN": BN, "G": G})
    print("lutc IR of the kernel (after passes):")
    print("\n".join(compiled.ir.splitlines()[:12]) + "\n  ...")


if __name__ == "__main__":
    main()
