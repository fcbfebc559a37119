"""An int8 matmul tile kernel in the lutc DSL, written like Triton's matmul tutorial.

C (M, N) int32 = A (M, K) uint8 or int8 @ B (K, N) int8. Each program computes one
(BM, BN) tile of C: it walks K in steps of BK, loads a (BM, BK) tile of A and a (BK, BN) tile
of B with 2-D pointer blocks and masks (ragged edges read 0), and accumulates `tl.dot`
into an int32 tile. The result is bit-exact against numpy's int32 matmul.

    python examples/int8_matmul.py
"""
import numpy as np

import lutc
import lutc.language as tl


@lutc.jit
def matmul_i8(a, b, c, M, N, K, stride_am, stride_bk, stride_cm,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.int32)
    for k0 in range(0, K, BK):
        k = k0 + offs_k
        x = tl.load(a + offs_m[:, None] * stride_am + k[None, :],
                    mask=(offs_m[:, None] < M) & (k[None, :] < K))
        w = tl.load(b + k[:, None] * stride_bk + offs_n[None, :],
                    mask=(k[:, None] < K) & (offs_n[None, :] < N))
        acc = tl.dot(x, w, acc)
    tl.store(c + offs_m[:, None] * stride_cm + offs_n[None, :], acc,
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def matmul(a: np.ndarray, b: np.ndarray, BM=8, BN=16, BK=32, threads=1) -> np.ndarray:
    """a (M, K) u8/i8 @ b (K, N) i8 -> (M, N) i32, both C-contiguous."""
    (M, K), N = a.shape, b.shape[1]
    c = np.zeros((M, N), np.int32)
    matmul_i8[(-(-M // BM), -(-N // BN))](a, b, c, M, N, K, K, N, N, BM=BM, BN=BN, BK=BK,
                                          threads=threads)
    return c


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (37, 100)).astype(np.uint8)
    b = rng.integers(-128, 128, (100, 29)).astype(np.int8)
    c = matmul(a, b)
    assert np.array_equal(c, a.astype(np.int32) @ b.astype(np.int32))
    print("int8 matmul tile kernel matches numpy:", c.shape)
