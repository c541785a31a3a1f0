"""Ways to form and apply ``(Sigma + lambda I)^{-1}`` for a batch of same-shape layers, and the rate of each kernel.

Times, interleaved, for B layers of d inputs and d_out outputs (default: the residual MLP policy's 8 hidden
layers, d = 257 with the bias, 256 outputs): the inverse by Cholesky + ``cholesky_inverse`` (what the library
does), by ``linalg.inv_ex`` (LU), by ``L^-1`` from a triangular solve and ``L^-T L^-1`` as a product, and by
``cholesky_solve`` against the identity; applying it per layer against one batched ``bmm``; and the GFLOP/s of the
product, the Cholesky factorization, ``cholesky_inverse`` and the triangular solves at that size (issue 14's
question: why a DoPr step cannot reach the flop ratio on CPU).

Run: .venv/bin/python benchmarks/inverse_forms.py [--layers 8 --d 257 --d-out 256]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def median_s(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d", type=int, default=257)
    parser.add_argument("--d-out", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    b, d, d_out = args.layers, args.d, args.d_out
    z = torch.randn(b, 4 * d, d)
    sigma = ((z.mT @ z) / (4 * d) + 0.1 * torch.eye(d)).contiguous()
    eye = torch.eye(d).expand(b, d, d).contiguous()
    grad = torch.randn(b, d_out, d)

    def chol() -> torch.Tensor:
        view = sigma.clone().mT  # column-major, as the library factorizes in place
        torch.linalg.cholesky_ex(view, out=(view, torch.empty(b, dtype=torch.int32)))
        return view

    def potri() -> torch.Tensor:
        view = chol()
        torch.cholesky_inverse(view, out=view)
        return view.mT

    def trtri_mm() -> torch.Tensor:
        inv_l = torch.linalg.solve_triangular(chol(), eye, upper=False, left=True)
        return inv_l.mT @ inv_l

    inverse = potri()
    forms = {"cholesky + cholesky_inverse (library)": potri, "linalg.inv_ex (LU)": lambda: torch.linalg.inv_ex(sigma),
             "L^-1 by solve, then L^-T L^-1": trtri_mm, "cholesky_solve(I)": lambda: torch.cholesky_solve(eye, chol()),
             "cholesky alone": chol}
    applies = {"per layer: G_i @ P_i": lambda: [grad[i] @ inverse[i] for i in range(b)],
               "batched: bmm(G, P)": lambda: torch.bmm(grad, inverse)}
    factor = chol()
    kernels = {"product G P": (lambda: torch.bmm(grad, inverse), 2 * d_out * d * d),
               "cholesky_ex": (chol, d ** 3 / 3),
               "cholesky_inverse": (lambda: torch.cholesky_inverse(factor), 2 * d ** 3 / 3),
               "two triangular solves": (lambda: torch.linalg.solve_triangular(
                   factor.mT, torch.linalg.solve_triangular(factor, grad.mT, upper=False, left=True),
                   upper=True, left=True), 2 * d_out * d * d)}
    print(f"{b} layers, d = {d}, d_out = {d_out}, 1 thread, process-CPU medians of {args.reps} interleaved rounds\n")
    t = median_s(forms, args.reps)
    ref = t["cholesky + cholesky_inverse (library)"]
    for name, s in t.items():
        print(f"inverse by {name:<38} {s * 1e3:8.2f} ms  ({s / ref:.2f}x the library's)")
    print()
    for name, s in median_s(applies, args.reps).items():
        print(f"apply {name:<24} {s * 1e3:8.2f} ms")
    print()
    t = median_s({k: fn for k, (fn, _) in kernels.items()}, args.reps)
    rate = {k: b * flops / t[k] / 1e9 for k, (_, flops) in kernels.items()}
    for name, r in rate.items():
        print(f"{name:<24} {r:6.1f} GFLOP/s  ({r / rate['product G P']:.2f} of the product's rate)")


if __name__ == "__main__":
    main()
