"""DoPr: activation-wise preconditioning followed by any gradient preconditioner.

Each ``step()``: (a) every supported layer's gradient ``G`` becomes ``M = G (Sigma + lambda I)^{-1}``
(:class:`~dopr.ActivationPreconditioner`), then (b) the base optimizer steps on ``M`` as if it were
the gradient (its momentum, second moments and Newton-Schulz all see ``M``).

``DoPr`` is a ``torch.optim.Optimizer`` whose ``param_groups`` are the base optimizers' own group
dicts and whose ``state`` is their (shared) state, so LR schedulers, ``GradScaler``,
``zero_grad`` and checkpointing work as with the base optimizer.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .options import OPTION_NAMES, APOptions, resolve_options, with_options
from .preconditioner import ActivationPreconditioner
from .reporting import dopr_summary
from .routing import DEFAULT_AUX_PATTERNS, MATRIX_BASES, Route, build_bases

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
        self._loading_dopr: dict[str, Any] | None = None
        self._model = weakref.ref(model)  # to name parameters added later
        self._dopr_hooks = (self.register_state_dict_post_hook(DoPr._add_dopr_entry).id,
                            self.register_load_state_dict_pre_hook(DoPr._take_dopr_entry).id)
        self._constructed = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add parameters after construction, without AP: to the base optimizer, or with a matrix base (Muon,
        AdaMuon), which takes only the hidden Linear weights it was built with, to its auxiliary AdamW.

        (AP needs a layer's input: parameters of modules DoPr did not hook at construction cannot
        get it. To precondition new layers, build a new DoPr and load this one's state.)
        """
        if not getattr(self, "_constructed", False):  # Optimizer.__init__ registering the bases' groups
            super().add_param_group(param_group)
            return
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        held = {id(p) for group in self.param_groups for p in group["params"]}
        if any(id(p) in held for p in params):
            raise ValueError("some parameters appear in more than one parameter group (this DoPr already optimizes "
                             "them; its param_groups list every base optimizer's groups)")
        group = {**param_group, "params": params}
        label, target = self.bases[0]
        if label in MATRIX_BASES:
            label, target = "adamw", next((opt for name, opt in self.bases[1:] if name == "adamw"), None)
        if target is None:  # every parameter went to the matrix base at construction: an auxiliary AdamW now
            self.bases.append((label, torch.optim.AdamW([group], lr=self.bases[0][1].defaults["lr"])))
        else:
            target.add_param_group(group)
        model = self._model()
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        self.routes += [Route(names.get(id(p), f"added group parameter {i}"), tuple(p.shape), label,
                              "added by add_param_group") for i, p in enumerate(params)]
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
                    _step_base(opt)
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
        # the preconditioner's entry is added by the first state-dict post hook, so the user's see it too
        self._optimizer_state_dict_post_hooks.move_to_end(self._dopr_hooks[0], last=False)
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the user's load pre hooks see the "dopr" entry; the last one takes it out (checked before anything loads)
        self._optimizer_load_state_dict_pre_hooks.move_to_end(self._dopr_hooks[1])
        self._loading_dopr = None
        super().load_state_dict(state_dict)
        self._link_bases()
        for _, opt in self.bases:  # each base's own __setstate__, as its load_state_dict would run it: defaults for
            # the group keys an older torch did not write, step counts as tensors (in place: the links stay)
            opt.__setstate__({"state": opt.state, "param_groups": opt.param_groups})
        precond, self._loading_dopr = self._loading_dopr, None
        self.preconditioner.load_state_dict(precond)

    @staticmethod
    def _add_dopr_entry(opt: DoPr, state: dict[str, Any]) -> None:
        state["dopr"] = opt.preconditioner.state_dict()

    @staticmethod
    def _take_dopr_entry(opt: DoPr, state_dict: dict[str, Any]) -> dict[str, Any]:
        if "dopr" not in state_dict:
            raise KeyError(
                "this state dict has no 'dopr' entry: it was not saved by DoPr.state_dict(). To start DoPr "
                "from a plain optimizer's state, load it into the base optimizer instead (opt.bases[i][1])"
            )
        state_dict = dict(state_dict)
        precond = state_dict.pop("dopr")
        opt.preconditioner.check_state_dict(precond)  # before the base state changes anything
        opt._loading_dopr = precond
        return state_dict

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


def _step_base(opt: Optimizer) -> None:
    """A base optimizer's step inside DoPr's: without torch's global step hooks, which ran for DoPr's step already
    (a hook counting steps would count each base too); a base with step hooks of its own is stepped with them."""
    raw = getattr(type(opt).step, "__wrapped__", None)
    if raw is None or opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks:
        opt.step()
        return
    with torch.autograd.profiler.record_function(f"Optimizer.step#{type(opt).__name__}.step"):
        raw(opt)


with_options(DoPr.__init__, before="aux_lr")
