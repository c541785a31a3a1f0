"""Printable summaries: which layers get AP, what they recorded, and why every other weight matrix does not.

The summaries read the optimizer and preconditioner through the two protocols below (what a summary needs), so this
module imports neither class and the classes can import it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch


class ActivationPreconditioner(Protocol):
    """What the summaries read of :class:`dopr.ActivationPreconditioner`."""

    damping: float
    layers: Mapping[str, Any]
    groups: Mapping[Any, Any]
    skipped: Mapping[str, str]
    discovery: Any
    _grouping_frozen: bool

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

__all__ = ["dopr_summary", "parameter_status", "preconditioner_summary"]


def preconditioner_summary(ap: ActivationPreconditioner) -> str:
    cov = ap.coverage()
    lines = [f"ActivationPreconditioner: {len(ap.layers)} layers in {len(ap.groups)} input groups, "
             f"{cov['share']:.1%} of the trainable weight-matrix elements"
             + ("" if ap._grouping_frozen else " (layers sharing an input are grouped on the first step)")]
    for g in ap.groups.values():
        kind = "diagonal" if g.diagonal else f"{g.blocks} diagonal blocks" if g.blocks > 1 else "full"
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
    lines = [f"DoPr: {len(opt.routes)} trainable tensors, damping={ap.damping}",
             f"  {'parameter'.ljust(width)}  {'shape':<16} {'base':<8} {'AP':<8} why"]
    for name, r in named.items():
        ap_state = status.get(name, "-")
        short, _, why = ap_state.partition(": ")
        note = why if why else r.reason
        lines.append(f"  {name.ljust(width)}  {str(r.shape):<16} {r.base:<8} {short:<8} {note}")
    lines.append(ap.summary())
    return "\n".join(lines)
