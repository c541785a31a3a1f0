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

import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["COMPILE_REASON", "UNSEEN_CALL", "unseen_read", "ModuleHooks", "check_hooks_reached", "compiler_disabled",
           "in_backward", "output_tensors", "records_gradients", "when_backward_reaches"]

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
    """Call ``fn`` once, the first time a backward pass computes the gradient of any of ``outputs``.

    One output: a pre-hook on the node that made it, which an in-place op on the output (``nn.ReLU(inplace=True)``
    right after a Linear, as in Swin-v2's position-bias MLP) does not detach, unlike a hook on the tensor."""
    made = outputs[0]._base if len(outputs) == 1 and outputs[0]._is_view() else outputs[0]
    if len(outputs) == 1 and made is not None and made.grad_fn is not None:  # a view's node goes if it is modified
        made.grad_fn.register_prehook(lambda grads: fn())
    elif len(outputs) == 1:
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
    global _REPORT_CALL
    if _REPORT_CALL is None:  # made with the first hook, not at import: compiler_disabled imports torch._dynamo
        _REPORT_CALL = compiler_disabled(_report_call)
    return _InputHook(name, owner_module, owner_ref, method)


class _InputHook:
    """DoPr's forward hook on one module: reports the module's calls to its owner. A copy or pickle of the model (an
    EMA ``deepcopy``, ``torch.save(model)``) carries :func:`_inert_hook` in its place: the hooks are DoPr's
    bookkeeping, not part of the model."""

    __slots__ = ("method", "module", "name", "owner")

    def __init__(self, name: str, module: nn.Module, owner: weakref.ref, method: str) -> None:
        self.name, self.module, self.owner, self.method = name, module, owner, method

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        _REPORT_CALL(self, module, args, kwargs, output)  # type: ignore[misc]

    def __reduce__(self) -> tuple:
        return _inert_hook_of, ()


def _report_call(hook: _InputHook, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    if module is not hook.module or not records_gradients(module):  # the module of a copy that kept this hook
        return
    owner = hook.owner()
    if owner is not None:
        getattr(owner, hook.method)(hook.name, module, args, kwargs, output, in_backward())


_REPORT_CALL: Callable[..., None] | None = None


def _inert_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """What a copied or unpickled model holds where DoPr's hook was: nothing to report to."""


def _inert_hook_of() -> Callable[..., None]:
    return _inert_hook


def compiler_disabled(fn: Callable) -> Callable:
    """``fn`` run eagerly under torch.compile (a graph break whose reason says what to do)."""
    try:
        return torch.compiler.disable(fn, reason=COMPILE_REASON)
    except TypeError:  # torch < 2.7: no reason argument
        return torch.compiler.disable(fn)


# why a layer with a gradient recorded no input: the end of the warning, for a tapped and for a hooked layer
UNSEEN_READ = ("or its weight was read only through a tensor computed from it (a cast, a scaled or standardized copy) "
               "or by an op DoPr does not tap; ")
READS_SEEN = ("DoPr sees F.linear(x, W) (also of a cast W.float()), x @ W.T, F.embedding(ids, W), W[ids], F.convNd "
              "with its module's geometry, F.multi_head_attention_forward, those products of a torch.cat of weights "
              "and, for expert banks, F.linear(x, W[e]) and grouped_mm on the weight itself.")
UNSEEN_CALL = ("or its weight is used without calling the module, or torch.compile runs a graph it built before DoPr "
               "was constructed (call torch.compiler.reset() after constructing DoPr).")


def unseen_read(op: str | None) -> str:
    """Why a tapped layer with a gradient recorded no input, naming the op that read its weight when one is known."""
    if op is None:
        return UNSEEN_READ + READS_SEEN
    if op.startswith("or "):  # a read DoPr follows, but cannot use (dopr.statistics: a read as x @ W)
        return f"{op}; {READS_SEEN}"
    return (f"or its weight was read only through a tensor computed from it by {op}, not a read DoPr follows; "
            f"{READS_SEEN}")


def check_hooks_reached(hooked: list[tuple[str, bool]]) -> None:
    """Raise at the first step when no hooked layer with a gradient (name, recorded anything) recorded an input
    while torch.compile has compiled graphs: a graph Dynamo built before DoPr's hooks existed runs without them, and
    DoPr would silently train those layers as its base optimizer. Called before anything is modified."""
    missed = [name for name, recorded in hooked if not recorded]
    if not missed or len(missed) < len(hooked) or not _dynamo_compiled():
        return
    raise RuntimeError(
        f"DoPr recorded no input for any of the {len(missed)} layer(s) it reads at their module call "
        f"({', '.join(missed[:4])}{', ...' if len(missed) > 4 else ''}), although they have gradients, and "
        "torch.compile has compiled graphs in this process: the model is running a graph Dynamo built before DoPr "
        "installed its hooks (compiled, then called, then DoPr constructed; or another instance of the same class "
        "compiled earlier), so these layers would train exactly as with the base optimizer. Nothing was modified. "
        "Fix: construct DoPr before the compiled model's first call, or call torch.compiler.reset() after "
        "constructing DoPr (the next call compiles again, with DoPr's hooks).")


def _dynamo_compiled() -> bool:
    """Whether torch.compile has compiled a graph in this process (since its last reset); never imports Dynamo
    (where it was not imported, nothing was compiled)."""
    utils = sys.modules.get("torch._dynamo.utils")
    return utils is not None and utils.counters["stats"]["unique_graphs"] > 0
