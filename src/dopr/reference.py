"""A slow, obviously correct reference of the AP step, written independently of the fast path.

It records every layer input with its own hooks, builds Sigma from explicit outer products in
float64 (explicit patch extraction for convolutions, explicit one-hot vectors for embeddings, an
explicit appended 1 for biases), inverts ``Sigma + lambda I`` with ``torch.linalg.inv`` and writes
``G @ inverse`` into ``.grad``. Each layer computes its own Sigma (no sharing), so it also checks
that sharing one Sigma between layers that read one input changes nothing.
With ``max_block`` it keeps only the diagonal blocks of Sigma (an explicit mask over the
``ceil(d_in / max_block)`` contiguous blocks of width ``ceil(dim / blocks)``) and the full Sigma's lambda.
Use it only on tiny models: it is quadratic in everything.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["ReferenceAP"]


def _patches(module: nn.Module, x: Tensor) -> list[Tensor]:
    """All receptive-field patches of a Conv1d/Conv2d input, flattened in (C, *kernel) order."""
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, stride, dil, pad = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation), (
            (0, *module.padding) if module.padding != "same" else "same")
    else:
        kernel, stride, dil, pad = module.kernel_size, module.stride, module.dilation, module.padding
    if pad == "same":
        pad = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dil))
    if x.ndim == 3:
        x = x.unsqueeze(0)
    x = torch.nn.functional.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    n, c, h, w = x.shape
    out = []
    for b in range(n):
        i = 0
        while i + dil[0] * (kernel[0] - 1) < h:
            j = 0
            while j + dil[1] * (kernel[1] - 1) < w:
                rows = slice(i, i + dil[0] * (kernel[0] - 1) + 1, dil[0])
                cols = slice(j, j + dil[1] * (kernel[1] - 1) + 1, dil[1])
                patch = x[b, :, rows, cols]
                out.append(patch.reshape(-1))
                j += stride[1]
            i += stride[0]
    return out


class ReferenceAP:
    """Reference activation-wise preconditioner for Linear, Conv1d/2d and Embedding layers."""

    def __init__(self, model: nn.Module, damping: float, modules: list[str] | None = None,
                 max_block: int | None = None) -> None:
        self.damping = damping
        self.max_block = max_block
        wanted = set(modules) if modules is not None else None
        self.modules = {
            n: m
            for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)) and (wanted is None or n in wanted)
        }
        self.inputs: dict[str, list[Tensor]] = {n: [] for n in self.modules}
        self._handles = [m.register_forward_pre_hook(self._recorder(n)) for n, m in self.modules.items()]

    def _recorder(self, name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if module.training and torch.is_grad_enabled():
                x = args[0].detach().clone()
                self.inputs[name].append(x.to(torch.float64) if x.is_floating_point() else x)

        return hook

    def vectors(self, name: str) -> list[Tensor]:
        """The input vectors z_i (bias-augmented) that this layer saw since the last precondition."""
        module = self.modules[name]
        rows: list[Tensor] = []
        for x in self.inputs[name]:
            if isinstance(module, nn.Embedding):
                for token in x.reshape(-1).tolist():
                    onehot = torch.zeros(module.num_embeddings, dtype=torch.float64)
                    onehot[token] = 1.0
                    rows.append(onehot)
            elif isinstance(module, nn.Linear):
                rows.extend(x.reshape(-1, module.in_features).unbind(0))
            else:
                rows.extend(_patches(module, x))
        if getattr(module, "bias", None) is not None:
            rows = [torch.cat([r, torch.ones(1, dtype=torch.float64)]) for r in rows]
        return rows

    def sigma(self, name: str) -> Tensor:
        rows = self.vectors(name)
        s = torch.zeros(rows[0].numel(), rows[0].numel(), dtype=torch.float64)
        for r in rows:
            s += torch.outer(r, r)
        return s / len(rows)

    def gradient_matrix(self, name: str) -> Tensor:
        module = self.modules[name]
        if isinstance(module, nn.Embedding):
            return module.weight.grad.to(torch.float64).T
        g = module.weight.grad.to(torch.float64).reshape(module.weight.shape[0], -1)
        if getattr(module, "bias", None) is not None:
            g = torch.cat([g, module.bias.grad.to(torch.float64).reshape(-1, 1)], dim=1)
        return g

    @torch.no_grad()
    def precondition_(self) -> None:
        for name, module in self.modules.items():
            if not self.inputs[name] or module.weight.grad is None:
                continue
            s = self.sigma(name)
            d = s.shape[0]
            lam = self.damping * torch.trace(s) / d
            if self.max_block is not None and not isinstance(module, nn.Embedding):
                s = s * self._block_mask(d, d - int(getattr(module, "bias", None) is not None))
            m = self.gradient_matrix(name) @ torch.linalg.inv(s + lam * torch.eye(d, dtype=torch.float64))
            if isinstance(module, nn.Embedding):
                module.weight.grad.copy_(m.T)
                continue
            k = module.weight[0].numel()
            module.weight.grad.copy_(m[:, :k].reshape(module.weight.shape))
            if getattr(module, "bias", None) is not None:
                module.bias.grad.copy_(m[:, k])
        for rows in self.inputs.values():
            rows.clear()

    def _block_mask(self, dim: int, in_features: int) -> Tensor:
        blocks = -(-in_features // self.max_block)
        width = -(-dim // blocks)
        which = torch.arange(dim) // width
        return (which[:, None] == which[None, :]).to(torch.float64)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
