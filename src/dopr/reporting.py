"""Printable summaries: which layers get AP, what they recorded, and why every other weight matrix does not.

The summaries read the optimizer and preconditioner through the two protocols below (what a summary needs), so this
module imports neither class and the classes can import it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch

from .adapters.discovery import is_weight_matrix


class ActivationPreconditioner(Protocol):
    """What the summaries read of :class:`dopr.ActivationPreconditioner`."""

    damping: float
    step_count: int
    layers: Mapping[str, Any]
    groups: Mapping[Any, Any]
    skipped: Mapping[str, str]
    discovery: Any
    _grouping_frozen: bool
    _tied_writers: Mapping[str, bool]

    def coverage(self) -> dict[str, Any]: ...
    def layer_status(self, name: str) -> str: ...
    def summary(self) -> str: ...
    def _named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]: ...


class DoPr(Protocol):
    """What the summary reads of :class:`dopr.DoPr`."""

    @property
    def preconditioner(self) -> ActivationPreconditioner: ...
    @property
    def routes(self) -> Sequence[Any]: ...

__all__ = ["coverage", "dopr_summary", "layer_status", "parameter_status", "preconditioner_summary"]


def layer_status(ap: ActivationPreconditioner, name: str) -> str:
    """What actually happened to layer ``name``: ``"yes"``, ``"pending"`` (no step yet) or ``"no: why"``."""
    layer = ap.layers[name]
    group = ap.groups[layer.group]
    missing = group.missing_statistics
    if group.factor is not None:
        return f"yes, but no input recorded on {missing} step(s)" if missing else "yes"
    if missing:
        return (f"no: recorded no input on {missing} step(s) while it had a gradient (its forward ran in eval "
                "mode or under no_grad, or backward never reached its output)")
    if ap.step_count and name in ap._tied_writers:
        return "unused: never called; its weight gets AP through the layers that share it"
    if ap.step_count and layer.adapter.reads == "expert":
        return "unused: no token has been routed to this expert yet (its gradient is zero)"
    return "pending (no step yet)" if ap.step_count == 0 else "no: no input recorded yet"


def coverage(ap: ActivationPreconditioner) -> dict[str, float | int]:
    """Share of the trainable weight-matrix elements (parameters with two dims of size > 1) that get AP: those of
    the layers, less the layers that had a gradient but never an input recorded (``no_statistics`` of them; a weight
    read in a way DoPr cannot see). A parameter several layers share (q/k/v rows, an expert bank) counts by the rows
    of each."""
    rows: dict[int, int] = {}
    failed = 0
    for layer in ap.layers.values():
        group = ap.groups[layer.group]
        if group.missing_statistics and group.factor is None:
            failed += 1
            continue
        for p in layer.adapter.params(layer.module):
            span = layer.adapter.rows_of(layer.module, p)
            rows[id(p)] = rows.get(id(p), 0) + (p.shape[0] if span is None else span[1] - span[0])
    total = done = 0
    for _, p in ap._named_parameters():
        if p.requires_grad and is_weight_matrix(p):
            total += p.numel()
            done += p.numel() * min(rows.get(id(p), 0), p.shape[0]) // p.shape[0]
    return {"weight_elements": total, "preconditioned_elements": done, "share": done / total if total else 1.0,
            "uncovered": len(ap.discovery.uncovered), "no_statistics": failed}


def preconditioner_summary(ap: ActivationPreconditioner) -> str:
    cov = ap.coverage()
    lines = [f"ActivationPreconditioner: {len(ap.layers)} layers in {len(ap.groups)} input groups, "
             f"{cov['share']:.1%} of the trainable weight-matrix elements"
             + ("" if ap._grouping_frozen else " (layers sharing an input are grouped on the first step)")]
    for g in ap.groups.values():
        kind = ("diagonal" if g.diagonal else f"{g.blocks} diagonal blocks" if g.blocks > 1
                else f"one per group of {g.groups}" if g.groups > 1 else "full")
        status = ap.layer_status(g.members[0])
        lines.append(f"  AP   {', '.join(g.members)}  (Sigma {g.dim}x{g.dim} {kind}{', bias' if g.bias else ''}): "
                     f"{status}")
    for name in ap.discovery.attention_names:
        lines.append(f"  note {name}: nn.MultiheadAttention switched to dopr's CapturedMultiheadAttention (same "
                     "parameters and outputs) so that out_proj's input is seen")
    for name, why in ap.skipped.items():
        lines.append(f"  --   {name}: {why}")
    reported = set(ap.skipped)
    for name, why in ap.discovery.uncovered.items():
        if name.rpartition(".")[0] not in reported:
            lines.append(f"  --   {name}: {why}")
    return "\n".join(lines)


def parameter_status(ap: ActivationPreconditioner) -> dict[str, str]:
    """Parameter name -> AP status ("yes", "pending", "no: why", or "-" for vectors of layers without AP)."""
    by_param: dict[int, list[str]] = {}
    for name, layer in ap.layers.items():
        for p in layer.adapter.params(layer.module):
            by_param.setdefault(id(p), []).append(name)
    status: dict[str, str] = {}
    for pname, p in ap._named_parameters():
        layers = by_param.get(id(p))
        if layers:
            states = {ap.layer_status(n) for n in layers}
            states = {s for s in states if not s.startswith("unused")} or states  # tied: the used layers decide
            status[pname] = states.pop() if len(states) == 1 else "; ".join(sorted(states))
        elif pname in ap.discovery.uncovered:
            status[pname] = f"no: {ap.discovery.uncovered[pname]}"
        else:
            owner = pname.rpartition(".")[0]
            why = ap.skipped.get(owner)
            status[pname] = f"no: {why}" if why else "-"
    return status


def dopr_summary(opt: DoPr) -> str:
    ap = opt.preconditioner
    status = parameter_status(ap)
    named = {r.name: r for r in opt.routes}
    width = max((len(n) for n in named), default=10)
    lines = [f"DoPr: {len(opt.routes)} trainable tensors, damping={ap.options.damping}",
             f"  {'parameter'.ljust(width)}  {'shape':<16} {'base':<8} {'AP':<8} why"]
    for name, r in named.items():
        ap_state = status.get(name, "-")
        short, _, why = ap_state.partition(": ")
        note = why if why else r.reason
        lines.append(f"  {name.ljust(width)}  {str(r.shape):<16} {r.base:<8} {short:<8} {note}")
    lines.append(ap.summary())
    return "\n".join(lines)
