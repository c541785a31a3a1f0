"""Forward pre-hooks that see layer inputs, and the rules for which forward passes count.

A forward counts towards Sigma only if it can contribute to the gradient the next ``step()`` uses:
the module is in ``train()`` mode, autograd is recording (not ``torch.no_grad()`` nor inference
mode), and it is not a recomputation done by activation checkpointing during backward, unless the
original forward did not count (reentrant checkpointing runs the original under ``no_grad``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["InputHooks", "in_backward", "records_gradients"]

InputCallback = Callable[[str, Tensor, bool], None]


def in_backward() -> bool:
    """True while the autograd engine runs a backward pass (where checkpointing recomputes)."""
    return torch._C._current_graph_task_id() != -1


def records_gradients(module: nn.Module) -> bool:
    """Whether a forward of ``module`` right now can produce a gradient for its weights."""
    return module.training and torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


class InputHooks:
    """Installs one forward pre-hook per module and reports the first positional input.

    The callback receives ``(module_name, input, during_backward)``; the input is the very tensor
    object the module got, so layers that read one tensor can be recognised. The hooks never modify
    the input; they are excluded from ``torch.compile`` tracing so a compiled model keeps one graph.
    """

    def __init__(self, modules: dict[str, nn.Module], callback: InputCallback) -> None:
        self._callback = callback
        self._handles: list[RemovableHandle] = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name, module)))

    def _make_hook(self, name: str, owner: nn.Module) -> Callable[[nn.Module, tuple], None]:
        @torch.compiler.disable
        def hook(module: nn.Module, args: tuple) -> None:
            # a deepcopy of the model (an EMA copy, say) carries this hook along: ignore its forwards
            if module is not owner or not args or not records_gradients(module):
                return
            x = args[0]
            if isinstance(x, Tensor):
                self._callback(name, x, in_backward())

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
