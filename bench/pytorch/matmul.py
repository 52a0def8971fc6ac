"""PyTorch's CPU matmul at bench-matmul's shapes: `matmul.py THREADS m,k,n,transposed ...`, GFLOP/s, best of 5."""
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]))
print(f"torch {torch.__version__}, BLAS: {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}")
for spec in sys.argv[2:]:
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
