"""Where ``solve="auto"`` switches from Cholesky solves to an explicit inverse.

For one layer (``d_out x d`` gradient, ``d x d`` damped Sigma) it times, interleaved, both ways of applying
``(Sigma + lambda I)^{-1}`` from Sigma: Cholesky then two triangular solves (``d^3/3 + 2 d_out d^2`` flops), and
Cholesky, ``cholesky_inverse`` and one product (``d^3 + 2 d_out d^2``). The flops always favour the solves; on CPU
the solves run far below the product rate, and the inverse wins from about ``d_out = 0.6 d`` on.

Run: .venv/bin/python benchmarks/solve_crossover.py [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def time_both(d: int, d_out: int, reps: int, device: str) -> tuple[float, float]:
    z = torch.randn(4 * d, d, device=device)
    sigma = ((z.mT @ z) / (4 * d) + 0.1 * torch.eye(d, device=device))[None].contiguous()
    grad = torch.randn(d_out, d, device=device)

    def cholesky() -> torch.Tensor:
        view = sigma.clone().mT  # column-major, as the library factorizes in place
        torch.linalg.cholesky_ex(view, out=(view, torch.empty(1, dtype=torch.int32, device=device)))
        return view

    def solves() -> torch.Tensor:
        chol = cholesky()[0]
        x = torch.linalg.solve_triangular(chol, grad.mT, upper=False, left=True)
        return torch.linalg.solve_triangular(chol.mT, x, upper=True, left=True).mT

    def inverse() -> torch.Tensor:
        view = cholesky()
        torch.cholesky_inverse(view, out=view)
        return grad @ view.mT[0]

    times: dict[str, list[float]] = {"solves": [], "inverse": []}
    for _ in range(reps):
        for name, fn in (("solves", solves), ("inverse", inverse)):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return statistics.median(times["solves"]), statistics.median(times["inverse"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--widths", default="65,129,257,513,1025")
    parser.add_argument("--ratios", default="0.25,0.5,0.625,0.75,1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("d_in (with bias) | d_out | d_out/d | solves ms | inverse ms | inverse/solves")
    for d in map(int, args.widths.split(",")):
        for ratio in map(float, args.ratios.split(",")):
            d_out = max(1, round(ratio * (d - 1)))
            solve_s, inverse_s = time_both(d, d_out, 30 if d < 600 else 7, args.device)
            print(f"{d:5d} | {d_out:5d} | {d_out / d:4.2f} | {solve_s * 1e3:8.2f} | {inverse_s * 1e3:8.2f} | "
                  f"{inverse_s / solve_s:4.2f}", flush=True)


if __name__ == "__main__":
    main()
