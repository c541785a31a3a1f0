"""Feasibility of capturing Sigma where a weight is read, inside autograd (issues 21 and 25; docs/design-capture.md).

Two taps, each on a 3-layer MLP, eagerly and under ``torch.compile(fullgraph=True)``:

- ``mode``: a ``TorchFunctionMode`` sees every ``F.linear(x, W)`` and, for a registered ``W``, feeds ``x`` through
  :class:`SigmaTap`, an identity whose backward returns ``x^T x`` as the gradient of a phantom leaf;
- ``param``: the weight's class becomes a ``Parameter`` subclass whose ``__torch_function__`` does the same.

Printed: whether the phantom's ``.grad`` equals the float64 hand count of ``sum z z^T`` per layer, the number of
compiled frames, including the build order that makes today's hooks silently miss (compile, one forward without
DoPr, then DoPr), and the step time against plain AdamW (arms interleaved; wall and CPU time).

    .venv/bin/python benchmarks/capture_taps.py [--backend inductor]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch._dynamo as dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.overrides import TorchFunctionMode


class SigmaTap(torch.autograd.Function):
    """Identity on ``x``; backward adds ``z^T z`` (z: the rows of x) to the phantom leaf's gradient."""

    @staticmethod
    def forward(x: torch.Tensor, phantom: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        z = x.reshape(-1, x.shape[-1])
        return grad, z.T @ z


PHANTOMS: dict[int, torch.Tensor] = {}  # id(weight) -> its phantom leaf (the mode tap)


class TapMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is F.linear and (phantom := PHANTOMS.get(id(args[1]))) is not None:
            args = (SigmaTap.apply(args[0], phantom), *args[1:])
        return func(*args, **(kwargs or {}))


class TappedParameter(nn.Parameter):
    _phantom: torch.Tensor

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        if func is F.linear and isinstance(args[1], TappedParameter):
            args = (SigmaTap.apply(args[0], args[1]._phantom), *args[1:])
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def mlp(width: int = 16, depth: int = 3, d_in: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    dims = [d_in] + [width] * (depth - 1)
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:], strict=False):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], 2))


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def hand_count(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """sum z z^T of each Linear's input, in float64."""
    out, h = [], x.double()
    for m in model.double():
        if isinstance(m, nn.Linear):
            out.append(h.T @ h)
        h = m(h)
    model.float()
    return out


def tap(model: nn.Module, kind: str) -> list[torch.Tensor]:
    phantoms = []
    for layer in linears(model):
        phantom = torch.zeros(layer.in_features, layer.in_features, requires_grad=True)
        if kind == "param":
            weight = TappedParameter(layer.weight.data)
            weight._phantom = phantom
            layer.weight = weight
        else:
            PHANTOMS[id(layer.weight)] = phantom
        phantoms.append(phantom)
    return phantoms


def forward(model: Callable, x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mode":
        with TapMode():
            return model(x)
    return model(x)


def feasibility(backend: str) -> None:
    x = torch.randn(32, 8)
    want = hand_count(mlp(), x)
    print(f"| tap | compiled ({backend}, fullgraph) | build order | Sigma = float64 count | frames compiled |")
    print("|---|---|---|---|---|")
    for kind in ("mode", "param"):
        for compiled, order in ((False, "-"), (True, "tap, then compile"), (True, "compile, forward, then tap")):
            dynamo.reset()
            counter = CompileCounterWithBackend(backend)
            model = mlp()
            run = torch.compile(model, fullgraph=True, backend=counter) if compiled else model
            if order.startswith("compile"):
                run(x)  # a shape check before DoPr exists: today's hooks then miss every step
            phantoms = tap(model, kind)
            forward(run, x, kind).pow(2).sum().backward()
            ok = all(p.grad is not None and torch.allclose(p.grad.double(), w, rtol=1e-4, atol=1e-4)
                     for p, w in zip(phantoms, want, strict=True))
            print(f"| {kind} | {'yes' if compiled else 'no'} | {order} | {ok} | "
                  f"{counter.frame_count if compiled else '-'} |")
            PHANTOMS.clear()


def cost(steps: int) -> None:
    torch.set_num_threads(1)
    x = torch.randn(256, 256)

    def arm(kind: str) -> Callable[[], None]:
        model = mlp(width=256, depth=5, d_in=256)
        if kind != "plain":
            tap(model, kind)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step() -> None:
            opt.zero_grad()
            forward(model, x, kind).pow(2).mean().backward()
            opt.step()

        return step

    arms = {k: arm(k) for k in ("plain", "mode", "param")}
    wall = dict.fromkeys(arms, 0.0)
    cpu = dict.fromkeys(arms, 0.0)
    for _ in range(steps):  # interleaved
        for k, step in arms.items():
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            wall[k] += time.perf_counter() - w0
            cpu[k] += time.process_time() - c0
    print(f"\nStep time, 5 Linear 256x256, batch 256, AdamW, eager, 1 thread, {steps} steps interleaved "
          "(the taps include the z^T z products themselves):\n")
    for k in arms:
        print(f"- {k}: {wall[k] / steps * 1e3:.2f} ms wall, {cpu[k] / steps * 1e3:.2f} ms CPU; "
              f"{wall[k] / wall['plain']:.2f}x / {cpu[k] / cpu['plain']:.2f}x plain")
    PHANTOMS.clear()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="aot_eager", help="aot_eager (fast) or inductor (needs a C compiler)")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    feasibility(args.backend)
    cost(args.steps)
