"""Forward hooks that see layer inputs, and the rules for which forward passes count.

A forward counts towards Sigma only if its rows can be in the gradient the next ``step()`` uses:

* when it runs, the module is in ``train()`` mode, autograd is recording (not ``torch.no_grad()`` nor
  inference mode), an output requires grad, and it is not a recomputation done by activation
  checkpointing during backward, unless the original forward did not count (reentrant checkpointing
  runs the original under ``no_grad``);
* its rows are *committed* only when backward reaches the module's output (a hook on the output
  tensors). A forward whose output is never backpropagated (a logging forward in train mode, the
  discriminator's forward inside a GAN's generator step that only the generator's optimizer uses)
  never enters Sigma.

The hooks hold their owner weakly: a preconditioner that is garbage-collected removes them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["COMPILE_REASON", "ModuleHooks", "compiler_disabled", "in_backward", "output_tensors", "records_gradients",
           "when_backward_reaches"]

# (module name, module, args, kwargs, output, during backward)
ForwardCallback = Callable[[str, nn.Module, tuple, dict, Any, bool], None]


def in_backward() -> bool:
    """True while the autograd engine runs a backward pass (where checkpointing recomputes)."""
    return torch._C._current_graph_task_id() != -1


def records_gradients(module: nn.Module) -> bool:
    """Whether a forward of ``module`` right now can produce a gradient for its weights."""
    return module.training and torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def output_tensors(output: Any) -> list[Tensor]:
    """The tensors of a module's output that carry gradient (nested tuples/lists, as LSTM's ``(out, (h, c))``)."""
    if isinstance(output, Tensor):
        return [output] if output.requires_grad else []
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in output_tensors(item)]
    return []


def when_backward_reaches(outputs: list[Tensor], fn: Callable[[], None]) -> None:
    """Call ``fn`` once, the first time a backward pass computes the gradient of any of ``outputs``."""
    if len(outputs) == 1:
        outputs[0].register_hook(lambda grad: fn())
    else:
        torch.autograd.graph.register_multi_grad_hook(outputs, lambda grads: fn(), mode="any")


class ModuleHooks:
    """One forward hook per module, reporting each call to ``owner``'s method ``method`` (held weakly)."""

    def __init__(self, modules: dict[str, nn.Module], owner: object, method: str) -> None:
        self._handles: list[RemovableHandle] = []
        owner_ref = weakref.ref(owner)
        for name, module in modules.items():
            self._handles.append(module.register_forward_hook(_make_hook(name, module, owner_ref, method),
                                                              with_kwargs=True))
        weakref.finalize(owner, ModuleHooks._remove_handles, self._handles)

    @staticmethod
    def _remove_handles(handles: list[RemovableHandle]) -> None:
        for handle in handles:
            handle.remove()
        handles.clear()

    def remove(self) -> None:
        self._remove_handles(self._handles)

    @property
    def active(self) -> bool:
        return bool(self._handles)


COMPILE_REASON = (
    "DoPr records this layer's input (at its module call, or where its weight is read) with Python bookkeeping that "
    "torch.compile cannot trace. Compile with fullgraph=False (one graph break per layer DoPr preconditions), or "
    "build DoPr with exclude=[...] for the "
    "layers inside a region you must compile as one graph")


def _make_hook(name: str, owner_module: nn.Module, owner_ref: weakref.ref, method: str) -> Callable[..., None]:
    def dopr_input_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        # a deepcopy of the model (an EMA copy, say) carries this hook along: ignore its forwards
        if module is not owner_module or not records_gradients(module):
            return
        owner = owner_ref()
        if owner is not None:
            getattr(owner, method)(name, module, args, kwargs, output, in_backward())

    return compiler_disabled(dopr_input_hook)


def compiler_disabled(fn: Callable) -> Callable:
    """``fn`` run eagerly under torch.compile (a graph break whose reason says what to do)."""
    try:
        return torch.compiler.disable(fn, reason=COMPILE_REASON)
    except TypeError:  # torch < 2.7: no reason argument
        return torch.compiler.disable(fn)
