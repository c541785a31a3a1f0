"""ActivationPreconditioner: the AP half of DoPr, usable in front of any optimizer.

It taps the weights of a model's supported layers (hooks on the modules whose reads a fused kernel hides:
convolutions, attention, RNNs), accumulates each layer's input second
moment Sigma over the forward passes of one step (micro-batches of gradient accumulation included),
factorizes ``Sigma + lambda I`` and rewrites each layer's ``.grad`` in place as ``M = G (Sigma +
lambda I)^{-1}``. Layers that read the same input tensor (q/k/v, gate/up) share one Sigma and one
factorization. State is keyed by module name.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function

from . import distributed
from . import reads as _reads  # noqa: F401  (importing it fills the tap's tables of ops)
from .adapters import Adapter, Discovery, discover, local
from .adapters.attention import release_attention
from .adapters.base import ReadTransposedAdapter, can_read_transposed
from .adapters.recurrent import release_recurrent
from .capture import UNSEEN_CALL, ModuleHooks, check_hooks_reached, unseen_read
from .finite import NonFiniteError, all_finite
from .functional import statistics_dtype
from .groups import Group, Layer, check_group_shapes, group_from_state, group_state, validate_state
from .options import APOptions, resolve_options, with_options
from .reads_banks import register_library_ops
from .refresh import Workspaces, fall_back, refresh_groups
from .reporting import coverage, layer_status, preconditioner_summary
from .statistics import StatisticsCapture
from .tap import bank_phantoms, owner_of, tap_layers, transposed_phantom, unseen_op, untap, untapped
from .tied import separate_tied_gradients

__all__ = ["ActivationPreconditioner", "NonFiniteError"]


# module -> weakref to the preconditioner whose hooks are on it (one preconditioner per layer)
_HOOKED: weakref.WeakKeyDictionary[nn.Module, weakref.ref] = weakref.WeakKeyDictionary()


def _module_adapter(adapter: Adapter) -> Adapter:
    """A layer's adapter as a module call reads it (unwrapping a switch to reading ``x @ W``)."""
    return adapter.inner if isinstance(adapter, ReadTransposedAdapter) else adapter


def _detach(handles: ModuleHooks | None, modules: list[nn.Module], attention: list[nn.Module],
            tapped: list[nn.Parameter] = ()) -> None:
    """Undo what a preconditioner did to its model: hooks, taps, the one-per-layer claims, attention switches."""
    if handles is not None:
        handles.remove()
    for module in modules:
        _HOOKED.pop(module, None)
    for param in tapped:
        untap(param)
    for module in attention:
        release_attention(module)
        release_recurrent(module)


class ActivationPreconditioner(StatisticsCapture):
    """Rewrites supported layers' gradients as ``G (Sigma + damping * tr(Sigma)/d * I)^{-1}``.

    Args:
        model: the module whose layers are preconditioned (their weights are tapped, :mod:`dopr.tap`).
        options: a [dopr.APOptions][dopr.APOptions]; ``None``: the defaults.
        **overrides: any [APOptions][dopr.APOptions] field by keyword (``damping=0.1``, ``max_rows="auto"``, ...),
            applied on top of ``options``. The constructor's signature lists them with their defaults.

    Statistics follow the gradient: a forward's rows enter Sigma only when backward reaches the layer's
    output, and ``DoPr.zero_grad()`` (or a ``.grad`` set to None or replaced) discards the rows collected
    for the gradient it clears. The hooks are removed by :meth:`remove`, on leaving a ``with`` block, or
    when the preconditioner is garbage-collected; a model's layer can have one preconditioner at a time.
    """

    def __init__(self, model: nn.Module, options: APOptions | None = None, **overrides: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be an nn.Module, got {type(model).__name__}; pass the model, not its parameters"
            )
        self.options = resolve_options(options, overrides, owner="ActivationPreconditioner")
        self.step_count = 0
        self.skipped_steps = 0
        self._generator = torch.Generator().manual_seed(self.options.seed)
        self._row_mask: Tensor | None = None
        self._tokens, self._token_count, self._masked_step = {}, 0, False
        self._read_transposed: set[str] = set()
        self._banks: dict[tuple[int, str], list[Layer]] = {}  # (id(module), bank) -> its experts' layers
        self._workspaces = Workspaces()  # the memory refreshes factorize in (the factors are views of it)
        self._grouping_frozen = not self.options.share_inputs
        self._epoch = 0  # bumped by reset_statistics(): pending forwards of an earlier epoch are dropped
        self.layers: dict[str, Layer] = {}
        self.groups: dict[str, Group] = {}
        self.discovery: Discovery = self._discover(model)
        self._model_parameters = list(model.named_parameters())
        self.skipped: dict[str, str] = self.discovery.skipped  # layer name -> why it is left to the base optimizer
        tapped = {name for name, spec in self.discovery.layers.items() if spec.tapped}
        hooked = {e.module_name: e.module for e in self.layers.values() if e.name not in tapped}
        self.tied = list(self.discovery.tied)  # (embeddings, head) sharing one weight
        # the embedding that writes its M first into a weight with no head (the others add theirs)
        self._tied_writers = {e: (head is None and i == 0) for embs, head in self.tied for i, e in enumerate(embs)}
        self._tied_embeddings = {self.layers[e].module_name: self.layers[e] for e in self._tied_writers}
        self._module_layers: dict[str, list[Layer]] = {n: [] for n in hooked}
        for entry in self.layers.values():
            if entry.module_name in hooked and entry.name not in tapped:
                self._module_layers[entry.module_name].append(entry)
        self._claim(hooked)
        self._claim_weights(tapped)
        self._hooks = ModuleHooks(hooked, self, "_on_forward")
        # reads inside a compiled graph accumulate exact, full Sigmas (no row subsampling, no blocks)
        compiled = statistics_dtype if self.options.max_rows is None and self.options.max_block is None else None
        register_library_ops()
        self._tapped, phantoms = tap_layers(self, [self.layers[n] for n in tapped], compiled)
        self._bank_phantoms = bank_phantoms(self._tapped)
        self._phantoms = {e.name: phantoms[id(e)] for e in self.layers.values() if id(e) in phantoms}
        self._transposed_phantoms = {n: leaf for n in tapped if (leaf := transposed_phantom(
            self.layers[n].adapter.weight(self.layers[n].module))) is not None}
        self._finalizer = weakref.finalize(self, _detach, self._hooks, list(hooked.values()),
                                           list(self.discovery.attention), self._tapped)

    # ----------------------------------------------------------------- discovery
    def _discover(self, model: nn.Module) -> Discovery:
        found = discover(model, self.options.exclude)
        if unexpected := found.unexpected():
            listing = "\n".join(f"  {name}: {why}" for name, why in unexpected.items())
            message = (f"DoPr leaves {len(unexpected)} trainable weight matrices without AP (their plain gradient goes "
                       f"to the base optimizer):\n{listing}\nPass exclude=[...] with their module names to leave them "
                       "out on purpose (silences this), or strict=True to make this an error.")
            if self.options.strict:
                _detach(None, [], found.attention)
                raise ValueError(message)
            warnings.warn(message, UserWarning, stacklevel=4)
        for name, spec in found.layers.items():
            self.layers[name] = Layer(name, spec.module, spec.adapter, group=name, module_name=spec.module_name)
            self.groups[name] = self._fresh_group(self.layers[name])
        return found

    def _claim(self, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            ref = _HOOKED.get(module)
            other = ref() if ref is not None else None
            if other is not None and other is not self and other._hooks.active:
                _detach(None, [], self.discovery.attention)
                raise ValueError(
                    f"layer '{name}' already has the hooks of another DoPr / ActivationPreconditioner, which would "
                    "record its inputs too. Call old_optimizer.remove() first (or build it in a `with` block), or "
                    "exclude this layer from one of them (exclude=[...])")
        for module in modules.values():
            _HOOKED[module] = weakref.ref(self)

    def _claim_weights(self, tapped: set[str]) -> None:
        for name in tapped:
            weight = self.layers[name].adapter.weight(self.layers[name].module)
            if owner := owner_of(weight):
                if owner is not self:
                    _detach(None, [], self.discovery.attention)
                    raise ValueError(
                        f"the weight of layer '{name}' is already tapped by another DoPr / ActivationPreconditioner, "
                        "which would record its inputs too. Call old_optimizer.remove() first (or build it in a "
                        "`with` block), or exclude this layer from one of them (exclude=[...])")

    def _fresh_group(self, layer: Layer, adapter: Adapter | None = None) -> Group:
        """An empty input group for ``layer`` alone, shaped by its adapter (or ``adapter``) and ``max_block``."""
        adapter, module = adapter or layer.adapter, layer.module
        blocks, groups = 1, adapter.groups(module)
        if self.options.max_block is not None and not adapter.diagonal and groups == 1:
            blocks = -(-adapter.in_features(module) // self.options.max_block)
        return Group([layer.name], adapter.dim(module), adapter.diagonal, adapter.has_bias(module), blocks, groups)

    def preconditioned_parameters(self) -> list[nn.Parameter]:
        params = {id(p): p for entry in self.layers.values() for p in entry.adapter.params(entry.module)}
        return list(params.values())

    def _weight(self, group: Group) -> nn.Parameter:
        first = self.layers[group.members[0]]
        return first.adapter.weight(first.module)

    # ----------------------------------------------------------------- the AP step
    def untapped(self) -> contextlib.AbstractContextManager:
        """A block in which this preconditioner's tapped weights are plain parameters (an optimizer step)."""
        return untapped(self._tapped)

    @torch.no_grad()
    def precondition_(self) -> bool:
        """Rewrite ``.grad`` of every preconditioned layer in place; advance the step counter.

        Returns False (and modifies nothing) if a non-finite value was found with
        ``nonfinite="skip"``. Raises :class:`NonFiniteError` with ``nonfinite="raise"``.
        """
        with self.untapped():
            return self._precondition()

    def _precondition(self) -> bool:
        refresh = self.capturing
        try:
            self._take_compiled()
            if refresh and not self._grouping_frozen:
                self._form_groups()
            work = [(e, self.groups[e.group]) for e in self.layers.values()
                    if e.adapter.weight(e.module).grad is not None]
            for group in self.groups.values():
                if group.has_rows:
                    self._drop_if_gradient_cleared(group)
            self._check_groups_consistent()
            if refresh and self.step_count == 0:
                self._check_hooks_reached(work)
            if refresh:
                self._reduce_across_ranks()
            grads = {e.name: e.adapter.gradient(e.module) for e, _ in work}
            separate_tied_gradients(self.tied, self.layers, grads, self.options.process_group)
            if not self._all_finite(work, grads, refresh):
                self.skipped_steps += 1
                return False
            if refresh:
                with record_function("dopr::factorize"):
                    fresh = [g for g in self.groups.values() if g.has_rows]
                    self._refresh(fresh)
                    self._grouping_frozen = self._grouping_frozen or bool(fresh)
            with record_function("dopr::apply"):
                self._apply(work, grads)
            self.step_count += 1
            return True
        finally:
            self._end_step()

    def _apply(self, work: list[tuple[Layer, Group]], grads: dict[str, Tensor]) -> None:
        tied_heads = {head for _, head in self.tied}
        writers = self._tied_writers
        # a tied embedding adds its M to the head's, which overwrites the weight's .grad: heads first
        for entry, group in sorted(work, key=lambda item: (item[0].name in writers, not writers.get(item[0].name))):
            g = grads[entry.name]
            if entry.name in writers and not writers[entry.name] and not entry.output_grads:
                continue  # a tied embedding not called this step: its share of the gradient is zero
            if group.factor is None and entry.adapter.reads == "expert" and self._bank_read(entry):
                continue  # no token has been routed to this expert yet: its gradient is zero, and so is its M
            if group.factor is None:
                group.missing_statistics += 1
                if group.missing_statistics == 1:
                    warnings.warn(
                        f"layer '{entry.name}' has a gradient but DoPr has recorded no input for it, so its gradient "
                        "is left as is (counted as missing_statistics in stats()). Causes: its forward ran in eval "
                        "mode or under no_grad, backward did not reach its output, reset_statistics() ran between "
                        f"forward and backward, {self._unseen_read_cause(entry)}",
                        RuntimeWarning, stacklevel=4,
                    )
                if entry.name not in writers and entry.name not in tied_heads:
                    continue
                m = g  # a tied layer's own share of the summed gradient, unpreconditioned
            else:
                factor = entry.adapter.local_factor(entry.module, group.factor)
                m = factor.apply(g.to(factor.dtype))
            if entry.name in writers:  # this rank's rows of the tied weight (all of them without FSDP2)
                grad = local(entry.module.weight.grad)
                grad.copy_(m.T) if writers[entry.name] else grad.add_(m.T.to(g.dtype))
            else:
                entry.adapter.write_gradient(entry.module, m.to(g.dtype))

    def _check_hooks_reached(self, work: list[tuple[Layer, Group]]) -> None:
        hooked = [(e.name, g.has_rows) for e, g in work if not self.discovery.layers[e.name].tapped]
        check_hooks_reached(hooked)

    def _bank_read(self, expert: Layer) -> bool:
        """Whether some expert of ``expert``'s bank recorded rows this step: the bank's reads are seen, so an expert
        without rows had no token routed to it (rather than a bank read by an op DoPr does not tap, Llama 4's bmm)."""
        key = (id(expert.module), expert.adapter.attr)
        if key not in self._banks:  # found once: this runs per expert without rows, and a model can have thousands
            self._banks[key] = [e for e in self.layers.values() if e.adapter.reads == "expert"
                                and (id(e.module), e.adapter.attr) == key]
        return any(self.groups[e.group].has_rows for e in self._banks[key])

    def _unseen_read_cause(self, layer: Layer) -> str:
        if not self.discovery.layers[layer.name].tapped:
            return UNSEEN_CALL
        return unseen_read(unseen_op(layer.adapter.weight(layer.module)))

    def _reduce_across_ranks(self) -> None:
        if not distributed.is_distributed(self.options.process_group):
            return
        if self.options.capturable:
            raise NotImplementedError("capturable=True is for one process: summing Sigma over ranks reads the row "
                                      "counts on the host; construct DoPr with capturable=False under DDP/FSDP")
        groups = list(self.groups.values())
        if not groups:
            return
        for group in groups:
            if group.total is None:  # every rank must contribute the same tensors, in the same order
                weight = self._weight(group)
                group.total = torch.zeros(group.sigma_shape(), dtype=statistics_dtype(weight.dtype),
                                          device=local(weight).device)
        rows = torch.tensor([float(g.rows) for g in groups], dtype=torch.float64, device=groups[0].total.device)
        distributed.all_reduce_sum_([g.total for g in groups] + [rows], self.options.process_group)
        for group, n in zip(groups, rows.tolist()):
            group.rows = int(n)

    def _check_groups_consistent(self) -> None:
        for group in self.groups.values():
            if len(group.members) < 2:
                continue
            for name in group.members:
                fires = self.layers[name].fires
                if fires and fires != group.accumulations:
                    raise RuntimeError(
                        f"layers {group.members} were grouped because they read the same input tensor, "
                        f"but '{name}' later read a different one. Construct the optimizer with "
                        "share_inputs=False if these layers do not always share their input."
                    )

    def _all_finite(self, work: list[tuple[Layer, Group]], grads: dict[str, Tensor], refresh: bool) -> bool:
        if self.options.capturable:
            return True  # looking reads a flag on the host; a non-finite Sigma keeps the last factor (refresh.py)
        checks = [(f"gradient of layer '{e.name}'", grads[e.name]) for e, _ in work]
        if refresh:
            checks += [(f"second moment of the input activations of layer(s) {g.members} (NaN/inf inputs, or "
                        "activations so large that z z^T overflows float32, |z| > ~1e19)", t)
                       for g in self.groups.values() if g.rows
                       for t in ([g.total] if g.total is not None else g.kept)]  # kept rows: each piece, no copy
        return all_finite(checks, step=self.step_count, nonfinite=self.options.nonfinite)

    def _refresh(self, groups: list[Group]) -> None:
        """New Sigma (batch or EMA) and factorization for each group; equal sizes share one batched call."""
        o, factorizer = self.options, None
        if o.split_factorization and distributed.is_distributed(o.process_group):
            factorizer = lambda stacks: distributed.factorize_across_ranks(  # noqa: E731
                stacks, o.damping, o.absolute_damping, o.process_group)
        failures = refresh_groups(groups, gamma=o.damping, eps=o.absolute_damping, sigma_mode=o.sigma,
                                  ema_decay=o.ema_decay, uses_cholesky=self._uses_cholesky, factorizer=factorizer,
                                  workspaces=self._workspaces,
                                  on_device=None if not o.capturable else o.fallback == "last")
        for failure in failures:
            weight = self._weight(failure.group)
            fall_back(failure, keep_last=o.fallback == "last", damping=o.damping,
                      dtype=statistics_dtype(weight.dtype), device=local(weight).device)

    def _uses_cholesky(self, group: Group) -> bool:
        if group.diagonal or self.options.solve == "inverse":
            return False
        if self.options.solve == "cholesky":
            return True
        outputs = sum(self.layers[m].adapter.out_features(self.layers[m].module) for m in group.members)
        width = group.sigma_shape()[-1]  # a block's width for a block-diagonal Sigma
        return self.options.refresh_every == 1 and 2 * outputs <= width

    # ----------------------------------------------------------------- reporting
    def stats(self) -> dict[str, dict[str, float | int | list[str]]]:
        """Telemetry per input group, keyed by the first member's module name."""
        return {key: g.telemetry() for key, g in self.groups.items()}

    def summary(self) -> str:
        """Each layer's input group and Sigma, what it recorded, and every layer or weight matrix without AP."""
        return preconditioner_summary(self)

    def layer_status(self, name: str) -> str:
        """What actually happened to layer ``name``: ``"yes"``, ``"pending"`` (no step yet) or ``"no: why"``."""
        return layer_status(self, name)

    def coverage(self) -> dict[str, float | int]:
        """Share of the trainable weight-matrix elements (parameters with two dims of size > 1) that get AP (see
        :func:`dopr.reporting.coverage`)."""
        return coverage(self)

    def _named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return self._model_parameters

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "skipped_steps": self.skipped_steps,
            "grouping_frozen": self._grouping_frozen,
            "generator": self._generator.get_state(),
            "fires": {n: (e.fires, e.fires_outside_backward) for n, e in self.layers.items()},
            "read_transposed": sorted(self._read_transposed),
            "groups": {key: group_state(g) for key, g in self.groups.items()},
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise a clear error if ``state`` cannot be loaded into this preconditioner; changes nothing."""
        validate_state(state)
        groups = state["groups"]
        unknown = {m for g in groups.values() for m in g["members"]} - set(self.layers)
        if unknown:
            raise KeyError(
                f"the state dict has statistics for layers {sorted(unknown)} that this preconditioner does not "
                "precondition; build it on the same model with the same exclude patterns"
            )
        flipped = set(state.get("read_transposed", ()))
        if bad := sorted(n for n in flipped if n not in self.layers or not can_read_transposed(
                _module_adapter(self.layers[n].adapter), self.layers[n].module)):
            raise ValueError(f"the state dict has layers {bad} read as x @ W, which this model's layers of those names "
                             "cannot be (no such layer, or one with a bias); build it on the same model")
        for saved in groups.values():
            first = self.layers[saved["members"][0]]
            adapter = _module_adapter(first.adapter)
            if first.name in flipped:
                adapter = ReadTransposedAdapter(adapter)
            check_group_shapes(saved, self._fresh_group(first, adapter))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore statistics saved by :meth:`state_dict`; validates everything before changing anything."""
        self.check_state_dict(state)
        groups = state["groups"]
        flipped = set(state.get("read_transposed", ()))
        for layer in self.layers.values():
            if (layer.name in flipped) != (layer.name in self._read_transposed):
                self._set_read_transposed(layer, layer.name in flipped)
        new_groups: dict[str, Group] = {}
        for key, saved in groups.items():
            first = self.layers[saved["members"][0]]
            device = first.adapter.weight(first.module).device
            new_groups[key] = group_from_state(saved, self._fresh_group(first), device)
            for m in saved["members"]:
                self.layers[m].group = key
        self.groups = new_groups
        self._workspaces.clear()
        self.step_count = int(state["step_count"])
        self.skipped_steps = int(state["skipped_steps"])
        self._grouping_frozen = bool(state["grouping_frozen"])
        self._generator.set_state(state["generator"])
        self.reset_statistics()
        for key, saved in groups.items():
            g = self.groups[key]
            device = local(self._weight(g)).device
            if saved.get("total") is not None or saved.get("kept") is not None:
                g.total = None if saved.get("total") is None else saved["total"].to(device)
                g.kept = [] if saved.get("kept") is None else [saved["kept"].to(device)]
                g.rows, g.accumulations = int(saved["rows"]), int(saved["accumulations"])
        for name, (fires, outside) in state.get("fires", {}).items():
            self.layers[name].fires, self.layers[name].fires_outside_backward = fires, outside

    def remove(self) -> None:
        """Remove the hooks from the model (and switch captured attention modules back); idempotent."""
        self._finalizer()

    def __enter__(self) -> ActivationPreconditioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


with_options(ActivationPreconditioner.__init__)
