"""DoPr: activation-wise preconditioning followed by any gradient preconditioner.

Each ``step()``: (a) every supported layer's gradient ``G`` becomes ``M = G (Sigma + lambda I)^{-1}``
(:class:`~dopr.ActivationPreconditioner`), then (b) the base optimizer steps on ``M`` as if it were
the gradient (its momentum, second moments and Newton-Schulz all see ``M``).

``DoPr`` is a ``torch.optim.Optimizer`` whose ``param_groups`` are the base optimizers' own group
dicts and whose ``state`` is their (shared) state, so LR schedulers, ``GradScaler``,
``zero_grad`` and checkpointing work as with the base optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .options import OPTION_NAMES, APOptions, resolve_options, with_options
from .preconditioner import ActivationPreconditioner
from .reporting import dopr_summary
from .routing import DEFAULT_AUX_PATTERNS, Route, build_bases

__all__ = ["DoPr"]


class DoPr(Optimizer):
    """Double Preconditioning.

    Args:
        model: the model to train; DoPr taps the weights of its supported layers and hooks the modules
                whose reads a fused kernel hides (``dopr.tap``, ``dopr.capture``).
        base: base optimizer name (``"adamw"``, ``"adam"``, ``"sgd"``, ``"signum"``, ``"muon"``,
            ``"adamuon"``) or any ``torch.optim.Optimizer`` subclass (called as ``cls(params, lr=lr,
            **base_kwargs)``).
        lr: learning rate of the base optimizer (``None``: the base optimizer's own default).
        options: a [dopr.APOptions][dopr.APOptions] with the AP options; ``None``: the defaults.
        aux_lr: for matrix bases (muon, adamuon), the learning rate of the AdamW that takes the other
            parameters (``None``: ``lr``).
        aux_kwargs: keyword arguments of that AdamW.
        aux_patterns: module-name patterns of Linear layers (output heads) that a matrix base leaves to
            the AdamW as well.
        **base_kwargs: any [APOptions][dopr.APOptions] field by keyword (``damping=0.1``, ``max_rows="auto"``,
            ...; applied on top of ``options``); everything else is passed to the base optimizer (``betas``,
            ``weight_decay``, ``momentum``, ...). The constructor's signature lists the AP options with their
            defaults.

    ``zero_grad()`` also discards the input statistics collected for the gradients it clears. The hooks
    go with [remove][dopr.DoPr.remove], the end of a ``with DoPr(...) as opt:`` block, or garbage collection.
    """

    def __init__(
        self,
        model: nn.Module,
        base: str | type[Optimizer] = "adamw",
        *,
        lr: float | None = None,
        options: APOptions | None = None,
        aux_lr: float | None = None,
        aux_kwargs: dict[str, Any] | None = None,
        aux_patterns: tuple[str, ...] = DEFAULT_AUX_PATTERNS,
        **base_kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"DoPr needs the model (an nn.Module), got {type(model).__name__}: DoPr(model, lr=...), "
                "not DoPr(model.parameters(), ...), because it reads each layer's input activations"
            )
        if lr is not None and (not (isinstance(lr, (int, float)) or torch.is_tensor(lr)) or lr < 0):
            raise ValueError(f"lr must be a number >= 0, got {lr!r}")
        overrides = {name: base_kwargs.pop(name) for name in OPTION_NAMES if name in base_kwargs}
        options = resolve_options(options, overrides, owner="DoPr")  # before the bases: a bad option loses nothing
        bases, routes = build_bases(model, base, lr, base_kwargs, aux_lr, aux_kwargs, tuple(aux_patterns))
        self.preconditioner = ActivationPreconditioner(model, options)
        self.bases: list[tuple[str, Optimizer]] = bases
        self.routes: list[Route] = routes
        groups = [g for _, opt in bases for g in opt.param_groups]
        super().__init__(groups, {})
        # Share the base optimizers' defaults and state so that schedulers (OneCycleLR reads
        # defaults["betas"]) and tools that walk optimizer.state (device moves) see the real thing.
        self.defaults = bases[0][1].defaults
        self._link_bases()
        self._constructed = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add parameters after construction; they go to the first base optimizer, without AP.

        (AP needs a layer's input: parameters of modules DoPr did not hook at construction cannot
        get it. To precondition new layers, build a new DoPr and load this one's state.)
        """
        if not getattr(self, "_constructed", False):  # Optimizer.__init__ registering the bases' groups
            super().add_param_group(param_group)
            return
        self.bases[0][1].add_param_group(param_group)
        self.param_groups = [g for _, opt in self.bases for g in opt.param_groups]
        self._link_bases()

    def _link_bases(self) -> None:
        offset = 0
        for _, opt in self.bases:
            n = len(opt.param_groups)
            opt.param_groups = self.param_groups[offset : offset + n]
            opt.state = self.state
            offset += n

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Precondition the gradients of the supported layers, then step the base optimizer(s)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with self.preconditioner.untapped():
            if self.preconditioner.precondition_():
                for _, opt in self.bases:
                    opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients and the input statistics collected for them (see the preconditioner)."""
        with self.preconditioner.untapped():
            super().zero_grad(set_to_none)
        self.preconditioner.clear_gradient_statistics()

    def remove(self) -> None:
        """Remove DoPr's hooks from the model (the optimizer then steps like its base, without AP)."""
        self.preconditioner.remove()

    def __enter__(self) -> DoPr:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["dopr"] = self.preconditioner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "dopr" not in state_dict:
            raise KeyError(
                "this state dict has no 'dopr' entry: it was not saved by DoPr.state_dict(). To start DoPr "
                "from a plain optimizer's state, load it into the base optimizer instead (opt.bases[i][1])"
            )
        precond = state_dict.pop("dopr")
        self.preconditioner.check_state_dict(precond)  # before the base state changes anything
        super().load_state_dict(state_dict)
        self._link_bases()
        self.preconditioner.load_state_dict(precond)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Telemetry per input group: trace of Sigma, condition estimate, damping, refreshes, fallbacks."""
        return self.preconditioner.stats()

    def summary(self) -> str:
        """A printable table: each parameter's base optimizer, whether it got AP (what actually happened) and why."""
        return dopr_summary(self)

    def __deepcopy__(self, memo: dict) -> DoPr:
        raise TypeError(
            "DoPr cannot be deep-copied: it owns hooks on its model. Copy the model, build a new "
            "DoPr on the copy and call new_opt.load_state_dict(opt.state_dict())"
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "DoPr cannot be pickled: it owns hooks on its model. Save opt.state_dict() instead "
            "(it loads with torch.load(weights_only=True))"
        )

    def __repr__(self) -> str:
        return f"DoPr(bases={[name for name, _ in self.bases]}, damping={self.preconditioner.options.damping})"


with_options(DoPr.__init__, before="aux_lr")
