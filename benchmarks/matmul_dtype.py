"""float32 vs bfloat16 matmul time on this CPU (1 thread): why torch.optim.Muon's bfloat16 Newton-Schulz is slow here.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/matmul_dtype.py
measured 2026-12-01 on the AVX2 machine: float32 5.1 ms, bfloat16 42.7 ms (8.4x); CPU capability AVX2
"""
import time

import torch

torch.set_num_threads(1)
for dt in (torch.float32, torch.bfloat16):
    a = torch.randn(384, 1536, dtype=dt)
    t = time.perf_counter()
    for _ in range(20):
        a @ a.T
    print(dt, f"{(time.perf_counter() - t) / 20 * 1e3:.1f} ms")
print(torch.backends.cpu.get_cpu_capability())
