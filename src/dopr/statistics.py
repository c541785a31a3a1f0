"""The statistics half of the ActivationPreconditioner: from the forwards of one step to each group's Sigma.

Each forward that can contribute to the next gradient (see :mod:`dopr.capture`) computes its
contribution at once (the input may not outlive the forward), as a pending sum of ``z z^T`` (or of
one-hot counts, or the rows themselves when they are few), and commits it to the group's running sum
only when backward reaches the layer's output. Layers that read the same input tensor are grouped on
the first step and share one Sigma.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function

from . import distributed
from .adapters.base import ReadTransposedAdapter, can_read_transposed
from .capture import in_backward, output_tensors, records_gradients, when_backward_reaches
from .functional import block_second_moment_sum, grouped_second_moment_sum, second_moment_sum, statistics_dtype
from .groups import Group, Layer
from .options import APOptions
from .sigma_tap import take
from .tap import drop_phantom, note_unseen

__all__ = ["AUTO_MIN_ROWS", "ROWS_PER_INPUT", "StatisticsCapture", "auto_row_cap"]

#: ``max_rows="auto"``: Sigma of a ``d``-input layer is estimated from at most this many rows per dimension per
#: forward, ...
ROWS_PER_INPUT = 4
#: ... and never from fewer than this many: forwards up to this size stay exact whatever the layer's width
AUTO_MIN_ROWS = 1024


def auto_row_cap(dim: int) -> int:
    """Rows per forward that ``max_rows="auto"`` keeps for a ``dim``-wide Sigma (more are subsampled)."""
    return max(ROWS_PER_INPUT * dim, AUTO_MIN_ROWS)

_NO_GRAD = object()  # grad marker: the weight had no .grad when rows were last committed


@dataclass
class _Pending:
    """The statistics of one forward of one input group, waiting for backward to reach the layer's output."""

    group: Group
    kind: str  # "sum": a (partial) sum of z z^T or of one-hot counts; "rows": the rows themselves (few of them)
    value: Tensor
    rows: int | Tensor  # a 0-d tensor: counted inside a compiled graph, capturable (left on the device)
    epoch: int



def _check_marker(marker: Any, grad: Tensor | None, holding: bool) -> tuple[Any, bool]:
    """The new marker of a weight's ``.grad`` and whether what was collected for it is stale: collected in an
    earlier backward pass for a gradient that has since been cleared (set to None or replaced). Within one backward
    pass the weight's ``.grad`` is written only after all its uses, so nothing is stale there."""
    task = torch._C._current_graph_task_id()
    stale = False
    if holding and marker is not None:
        marker_task, ref = marker
        stale = marker_task != task and (grad is None or (ref is not _NO_GRAD and ref() is not grad))
    return (task, _NO_GRAD if grad is None else weakref.ref(grad)), stale


class StatisticsCapture:
    """Capture of layer inputs into per-group statistics; mixed into :class:`~dopr.ActivationPreconditioner`,
    which owns ``layers``, ``groups``, the hooks and the options read here."""

    options: APOptions
    layers: dict[str, Layer]
    groups: dict[str, Group]
    _module_layers: dict[str, list[Layer]]
    _tied_embeddings: dict[str, Layer]  # module name -> the embedding layer tied to an output head
    _tokens: dict[int, tuple[weakref.ref, int]]  # id(input) -> (the input, its number), this step
    _token_count: int  # numbers given so far (never reused: an id is, once its tensor is gone)
    _phantoms: dict[str, Tensor]  # layer name -> the leaf its reads inside compiled graphs accumulate into
    _masked_step: bool  # row_mask was used since the last step
    _read_transposed: set[str]  # the layers that read their weight as x @ W (ReadTransposedAdapter)
    _transposed_phantoms: dict[str, Tensor]  # layer name -> the leaf of its reads as x @ W inside compiled graphs
    _bank_phantoms: list[tuple[Tensor, list[Layer | None]]]  # expert banks: their phantom, each expert's layer

    # ----------------------------------------------------------------- capture
    @property
    def capturing(self) -> bool:
        """Whether forwards now record statistics (the next step is a refresh step)."""
        return self.step_count % self.options.refresh_every == 0

    def _on_forward(self, module_name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any,
                    during_backward: bool) -> None:
        tied = self._tied_embeddings.get(module_name)
        if tied is not None and isinstance(output, Tensor) and output.requires_grad and not (
                during_backward and tied.fires_outside_backward > 0):
            ids = args[0].detach().reshape(-1)  # every step: the tied weight's gradient is separated every step
            output.register_hook(lambda grad: self._keep_output_gradient(tied, ids, grad))
        if self.capturing:
            reads = [(layer, layer.adapter.read(module, args, kwargs, output))
                     for layer in self._module_layers[module_name]]
            self._record(reads, output, during_backward)

    def _on_reads(self, reads: list[tuple[Layer, Tensor]], output: Any, transposed: frozenset[int] = frozenset()
                  ) -> None:
        """Tapped weights were read (:mod:`dopr.tap`), each layer against its tensor, by the op that gave
        ``output``: the same rules as a module's forward. The layers in ``transposed`` (by id) read their weight as
        ``x @ W``."""
        if transposed or self._read_transposed:
            reads = [(layer, x) for layer, x in reads if self._reads_as(layer, id(layer) in transposed)]
        if reads and self.capturing and records_gradients(reads[0][0].module):
            self._record(reads, output, in_backward())

    def _reads_as(self, layer: Layer, transposed: bool) -> bool:
        """Whether ``layer`` reads its weight this way (``transposed``: as ``x @ W``, its first dimension the input).
        A layer is switched at its first read, before it has statistics; a read the other way after that is named
        (the layer's Sigma belongs to one input)."""
        if (layer.name in self._read_transposed) == transposed:
            return True
        group = self.groups[layer.group]
        unread = (group.members == [layer.name] and not group.accumulations and group.ema is None
                  and group.factor is None and not group.has_rows)
        if unread and (not transposed or can_read_transposed(layer.adapter, layer.module)):
            self._set_read_transposed(layer, transposed)
            return True
        note_unseen(layer.adapter.weight(layer.module),
                    "or its weight was read as x @ W (its first dimension as the input), a read that does not use the "
                    "layer's bias" if transposed and unread else
                    "or its weight was read both as F.linear(x, W) and as x @ W (its first dimension as the input), "
                    "and one Sigma cannot serve both inputs")
        return False

    def _set_read_transposed(self, layer: Layer, transposed: bool) -> None:
        """Switch ``layer`` to (or back from) :class:`~dopr.adapters.base.ReadTransposedAdapter`, with a fresh group of
        its new width. Inside compiled graphs its reads as ``x @ W`` go on into its transposed phantom, which becomes
        its phantom; its ``F.linear`` reads, whose phantom has the other width, run eagerly (a graph break)."""
        if transposed:
            layer.adapter = ReadTransposedAdapter(layer.adapter)
            self._read_transposed.add(layer.name)
        else:
            layer.adapter = layer.adapter.inner
            self._read_transposed.discard(layer.name)
        self.groups[layer.group] = self._fresh_group(layer)
        drop_phantom(layer.adapter.weight(layer.module))
        self._phantoms.pop(layer.name, None)
        if transposed and layer.name in self._transposed_phantoms:
            self._phantoms[layer.name] = self._transposed_phantoms[layer.name]

    def _record(self, reads: list[tuple[Layer, Tensor | None]], output: Any, during_backward: bool) -> None:
        """Compute the statistics of these reads now; they join Sigma when backward reaches ``output``."""
        outputs = output_tensors(output)
        if not outputs:
            return  # nothing of this forward can reach the weights' gradients
        pending = []
        for layer, x in reads:
            if x is not None and (p := self._capture(layer, x, during_backward)) is not None:
                pending.append(p)
        if pending:
            when_backward_reaches(outputs, lambda: self._commit(pending))

    def _capture(self, layer: Layer, x: Tensor, during_backward: bool) -> _Pending | None:
        if during_backward and layer.fires_outside_backward > 0:
            return None  # a checkpoint recomputation of a forward already counted
        group = self._group_for(layer, x)
        layer.fires += 1
        if not during_backward:
            layer.fires_outside_backward += 1
        ref = group.seen.get(id(x))
        if ref is not None and ref() is x:
            return None  # another member of the group already counted this tensor
        group.seen[id(x)] = weakref.ref(x)
        group.accumulations += 1
        return self._contribution(layer, group, x.detach())

    def _group_for(self, layer: Layer, x: Tensor) -> Group:
        if not self._grouping_frozen and layer.module_name not in self._tied_embeddings:
            layer.reads.append(self._token(x))  # which tensors it reads: layers that read the same ones share a Sigma
        return self.groups[layer.group]

    def _token(self, x: Tensor) -> int:
        """A number for the tensor object ``x``, the same for every read of it this step (ids of dead tensors are
        reused, so a tensor is recognised by a weak reference, not by its id alone)."""
        ref, token = self._tokens.get(id(x), (None, None))
        if ref is None or ref() is not x:
            self._token_count += 1
            token = self._token_count
            self._tokens[id(x)] = (weakref.ref(x), token)
        return token

    def _form_groups(self) -> None:
        """At the first refresh, layers that read exactly the same tensors (q, k and v of one hidden state; gate and
        up) become one group with one Sigma: their statistics this step are equal, so the first member's are kept."""
        by_reads: dict[tuple, list[Layer]] = {}
        for layer in self.layers.values():
            group = self.groups[layer.group]
            if layer.reads and len(group.members) == 1 and group.accumulations:
                key = (tuple(layer.reads), group.dim, group.diagonal, group.bias, group.blocks, group.groups,
                       layer.adapter.sharing_key(layer.module))
                by_reads.setdefault(key, []).append(layer)
        for members in by_reads.values():
            if len(members) < 2:
                continue
            keep = self.groups[members[0].group]
            for layer in members[1:]:
                del self.groups[layer.group]
                layer.group = keep.members[0]
                keep.members.append(layer.name)
        self.groups = {g.members[0]: g for g in self.groups.values()}

    @torch.no_grad()
    def _contribution(self, layer: Layer, group: Group, x: Tensor) -> _Pending:
        """This forward's statistics for ``group``, computed now (the input may not outlive the forward)."""
        dtype = statistics_dtype(layer.adapter.weight(layer.module).dtype)
        with torch.autocast(x.device.type, enabled=False), record_function("dopr::sigma"):
            cap = auto_row_cap(group.dim) if self.options.max_rows == "auto" else self.options.max_rows
            masked = self._row_mask is not None and layer.adapter.maskable
            count = None if cap is None or masked else layer.adapter.row_count(layer.module, x)
            if count is not None and count > cap:  # draw the rows first, form only those (a conv's patches)
                idx = torch.randperm(count, generator=self._generator)[:cap]
                z = layer.adapter.selected_rows(layer.module, x, idx.to(x.device))
            else:
                z = layer.adapter.rows(layer.module, x)
                if masked:
                    z = self._masked(layer.name, x, z)
                if cap is not None and z.shape[0] > cap and group.groups == 1:
                    idx = torch.randperm(z.shape[0], generator=self._generator)[:cap]
                    z = z[idx.to(z.device)]
            n = z.shape[-2] if group.groups > 1 else z.shape[0]  # a grouped layer's rows: groups x n x d
            if group.diagonal:  # one-hot counts; index_add_, unlike bincount, needs no device sync
                counts = torch.zeros(group.dim, dtype=dtype, device=z.device)
                value, kind = counts.index_add_(0, z, torch.ones(n, dtype=dtype, device=z.device)), "sum"
            elif group.groups > 1:
                value, kind = grouped_second_moment_sum(z.to(dtype), augment_bias=group.bias), "sum"
            elif group.blocks > 1:
                value, kind = block_second_moment_sum(z.to(dtype), augment_bias=group.bias, blocks=group.blocks), "sum"
            elif 2 * n <= group.dim and self._low_rank_allowed():
                value, kind = z.to(dtype), "rows"  # few rows: perhaps kept as they are (Woodbury), see _commit
            else:
                value, kind = second_moment_sum(z.to(dtype), augment_bias=group.bias), "sum"
        return _Pending(group, kind, value, n, self._epoch)

    @torch.no_grad()
    def _commit(self, pending: list[_Pending]) -> None:
        """Backward reached the output of the forward that made ``pending``: its rows join this step's Sigma."""
        for p in pending:
            if p.epoch != self._epoch:
                continue
            group = p.group
            self._drop_if_gradient_cleared(group)
            if p.kind == "rows" and group.total is None and 2 * (group.rows + p.rows) <= group.dim:
                group.kept.append(p.value)
            else:
                if p.kind == "sum" and group.total is None:
                    group.total = p.value
                elif group.total is None:
                    group.total = torch.zeros(group.dim, group.dim, dtype=p.value.dtype, device=p.value.device)
                    second_moment_sum(p.value, augment_bias=group.bias, out=group.total)
                elif p.kind == "sum":
                    group.total.add_(p.value)
                else:
                    second_moment_sum(p.value, augment_bias=group.bias, out=group.total)
                for kept in group.kept:
                    second_moment_sum(kept, augment_bias=group.bias, out=group.total)
                group.kept.clear()
            group.rows += p.rows
        pending.clear()

    def _keep_output_gradient(self, layer: Layer, ids: Tensor, grad: Tensor) -> None:
        weight_grad = layer.adapter.weight(layer.module).grad
        layer.grad_marker, stale = _check_marker(layer.grad_marker, weight_grad, bool(layer.output_grads))
        if stale:
            layer.output_grads.clear()
        layer.output_grads.append((ids, grad.detach()))

    def _drop_if_gradient_cleared(self, group: Group) -> None:
        """Discard the rows committed in an earlier backward pass for a gradient that has since been cleared (set
        to None or replaced). Within one backward pass the weight's .grad is written only after all its uses."""
        group.grad_marker, stale = _check_marker(group.grad_marker, self._weight(group).grad, group.has_rows)
        if stale:
            self._clear_committed(group)

    @staticmethod
    def _clear_committed(group: Group) -> None:
        group.total, group.rows = None, 0
        group.kept.clear()

    def _take_compiled(self) -> None:
        """Move what compiled graphs accumulated in the phantoms (:mod:`dopr.sigma_tap`) into the groups, as the
        eager reads' pending sums are (one phantom per group: the members of a group read the same tensors)."""
        for name, leaf in self._transposed_phantoms.items():
            # a compiled graph read this layer as x @ W: switch it (named instead if it was read as F.linear before)
            if leaf.grad is not None and name not in self._read_transposed:
                if not self._reads_as(self.layers[name], True):
                    leaf.grad = None
        self._take_banks()
        live, groups = [], set()
        for name, phantom in self._phantoms.items():
            if phantom.grad is not None:
                layer = self.layers[name]
                if layer.group in groups:
                    phantom.grad = None
                else:
                    groups.add(layer.group)
                    live.append((layer, phantom))
        if not live:
            return
        if self._masked_step:
            self._clear_phantoms()
            raise ValueError("row_mask does not reach the layers read inside a compiled graph (their rows are counted "
                             "by autograd there): build DoPr with the masked forward left eager, or drop row_mask")
        stats = take([p for _, p in live], [self.groups[layer.group].bias for layer, _ in live])
        if self.options.capturable:  # the counts stay on the device (Sigma = total / rows there)
            rows = [n for _, n in stats]
        else:  # the one host read for all compiled layers
            rows = [int(n) for n in torch.stack([n for _, n in stats]).tolist()]
        self._commit([_Pending(self.groups[layer.group], "sum", total, n, self._epoch)
                      for (layer, _), (total, _), n in zip(live, stats, rows)])
        for layer, _ in live:
            self.groups[layer.group].accumulations += 1

    def _take_banks(self) -> None:
        """Each expert's statistics from its bank's phantom (:class:`~dopr.sigma_tap.BankSigmaTap`): an expert no row
        was routed to gets none, as when read eagerly."""
        taken = [(leaf.grad, experts) for leaf, experts in self._bank_phantoms if leaf.grad is not None]
        for leaf, _ in self._bank_phantoms:
            leaf.grad = None
        if not taken:
            return
        counts = torch.stack([g[:, -1, -1] for g, _ in taken])
        rows = counts if self.options.capturable else counts.tolist()  # the one host read for all banks
        pending = []
        for (g, experts), n in zip(taken, rows):
            for e, layer in enumerate(experts):
                if layer is None or (not self.options.capturable and not n[e]):
                    continue
                group = self.groups[layer.group]
                total = g[e] if group.bias else g[e, :-1, :-1]
                pending.append(_Pending(group, "sum", total, n[e] if self.options.capturable else int(n[e]),
                                        self._epoch))
                group.accumulations += 1
        self._commit(pending)

    def _clear_phantoms(self) -> None:
        for phantom in self._phantoms.values():
            phantom.grad = None
        for leaf in self._transposed_phantoms.values():
            leaf.grad = None
        for leaf, _ in self._bank_phantoms:
            leaf.grad = None

    def clear_gradient_statistics(self) -> None:
        """Forget the rows committed so far (``DoPr.zero_grad()`` calls this: they belong to the gradient it
        clears); forwards whose backward has not run yet still count when it does."""
        self._clear_phantoms()
        for group in self.groups.values():
            self._clear_committed(group)
            group.grad_marker = None
        for layer in self._tied_embeddings.values():
            layer.output_grads.clear()
            layer.grad_marker = None

    def _low_rank_allowed(self) -> bool:
        # the Woodbury form needs this step's rows on this rank: not for EMA Sigma or a Sigma summed over ranks
        o = self.options
        return (o.solve == "auto" and o.sigma == "batch" and not o.capturable
                and not distributed.is_distributed(o.process_group))

    @contextmanager
    def row_mask(self, mask: Tensor) -> Iterator[None]:
        """Count only the rows (tokens) where ``mask`` is true in the forwards run inside this block.

        ``mask`` has the leading shape of the layer inputs (e.g. an attention mask ``batch x seq``),
        so padding tokens do not enter Sigma. Layers whose input has other leading dims raise.
        """
        previous, self._row_mask = self._row_mask, mask.detach().bool()
        self._masked_step = True
        try:
            yield
        finally:
            self._row_mask = previous

    def _masked(self, name: str, x: Tensor, z: Tensor) -> Tensor:
        mask = self._row_mask
        lead = x.shape[: mask.ndim]
        if lead != mask.shape or mask.numel() != z.shape[0]:
            raise ValueError(
                f"row_mask of shape {tuple(mask.shape)} does not match the leading dims of the input of layer "
                f"'{name}' {tuple(x.shape)}; pass a mask shaped like the input without its feature dim"
            )
        return z[mask.reshape(-1).to(z.device)]

    def reset_statistics(self) -> None:
        """Forget what forwards recorded since the last step, including forwards whose backward has not run yet
        (to discard an abandoned step)."""
        self._epoch += 1
        self._clear_phantoms()
        self._end_step()

    def _end_step(self) -> None:
        for group in self.groups.values():
            self._clear_committed(group)
            group.accumulations, group.grad_marker = 0, None
            group.seen.clear()
        self._tokens.clear()
        self._masked_step = False
        for layer in self.layers.values():
            layer.fires = layer.fires_outside_backward = 0
            layer.reads.clear()
            layer.output_grads.clear()
            layer.grad_marker = None

