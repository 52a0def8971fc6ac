"""PyTorch's CPU matmul at bench-matmul's shapes: `matmul.py THREADS m,k,n,transposed ... attn:b,h,kv,t,d ...`:
GFLOP/s in f32 and in bf16 (what CPU autocast multiplies in; whether it beats f32 says whether bf16 compute can pay
on this CPU), best of 5; then causal sdpa forward + backward, ms, best of 5."""
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]))
print(
    f"torch {torch.__version__}, BLAS: {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}, "
    f"CPU capability: {torch.backends.cpu.get_cpu_capability()}"
)
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
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.rand(m, k, dtype=dtype)
        b = torch.rand(n, k, dtype=dtype).t() if transposed else torch.rand(k, n, dtype=dtype)
        best = float("inf")
        for i in range(6):
            t = time.perf_counter()
            torch.mm(a, b)
            if i:
                best = min(best, time.perf_counter() - t)
        rates.append(2 * m * n * k / best / 1e9)
    shape = f"{m}x{k}x{n}{' (rhs transposed)' if transposed else ''}"
    print(f"{shape}: {rates[0]:.1f} GFLOP/s f32, {rates[1]:.1f} bf16")
