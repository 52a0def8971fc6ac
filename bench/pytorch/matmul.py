"""PyTorch's CPU matmul at bench-matmul's shapes: `matmul.py THREADS m,k,n,transposed ... attn:b,h,kv,t,d ...`:
GFLOP/s, best of 5; then causal sdpa forward + backward, ms, best of 5."""
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]))
print(f"torch {torch.__version__}, BLAS: {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}")
def attention(spec):
    b, h, kv, t, d = (int(x) for x in spec.split(","))
    q = torch.randn(b, h, t, d, requires_grad=True)
    k = torch.randn(b, kv, t, d, requires_grad=True)
    v = torch.randn(b, kv, t, d, requires_grad=True)
    best = float("inf")
    for i in range(6):
        start = time.perf_counter()
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != h)
        y.sum().backward()
        if i:
            best = min(best, time.perf_counter() - start)
    print(f"attention {b}x{h}/{kv}x{t}x{d}: {best * 1e3:.1f} ms forward + backward")


for spec in sys.argv[2:]:
    if spec.startswith("attn:"):
        attention(spec[5:])
        continue
    m, k, n, transposed = (int(x) for x in spec.split(","))
    a = torch.rand(m, k)
    b = torch.rand(n, k).t() if transposed else torch.rand(k, n)
    best = float("inf")
    for i in range(6):
        t = time.perf_counter()
        torch.mm(a, b)
        if i:
            best = min(best, time.perf_counter() - t)
    print(f"{m}x{k}x{n}{' (rhs transposed)' if transposed else ''}: {2 * m * n * k / best / 1e9:.1f} GFLOP/s")
