"""Arms and the optimizer factory shared by every bench, with one Muon Newton-Schulz precision policy.

An arm is a base optimizer name, optionally prefixed with ``dopr-`` (the same base behind DoPr's activation-wise
preconditioning). Plain arms get the same parameter routing as DoPr (dopr.routing.build_bases), without AP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from dopr.bases.muon import fast_ns_dtype

BASE_NAMES = ("adamw", "adam", "sgd", "signum", "muon", "adamuon")


def parse_arm(arm: str) -> tuple[str, bool]:
    """``"dopr-muon"`` -> (``"muon"``, True); ``"muon"`` -> (``"muon"``, False)."""
    dopr = arm.startswith("dopr-")
    base = arm[5:] if dopr else arm
    if base not in BASE_NAMES:
        raise ValueError(f"unknown arm {arm!r}: use one of {list(BASE_NAMES)}, optionally prefixed with 'dopr-'")
    return base, dopr


def validate_arms(arms: list[str]) -> None:
    """Raise SystemExit naming the first unknown arm (before any data is loaded or a run starts)."""
    if not arms:
        raise SystemExit("no arms given (--optimizers)")
    for arm in arms:
        try:
            parse_arm(arm)
        except ValueError as err:
            raise SystemExit(str(err)) from err


def hardware_ns_dtype() -> str:
    """The Muon arms' Newton-Schulz precision on this machine: bfloat16 where its matmuls are at least as fast as
    float32's (native bfloat16, e.g. AMX), else float32 (on AVX2/AVX-512 CPUs torch's bfloat16 matmul is 2-8x
    slower). Decided once per process (the probe is cached), the same for every bench."""
    return str(fast_ns_dtype("cpu")).removeprefix("torch.")


class MultiOptimizer:
    """Steps several optimizers as one (the plain arms: the same routing as DoPr, without AP)."""

    def __init__(self, bases: list[tuple[str, Optimizer]]) -> None:
        self.bases = bases

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for _, opt in self.bases for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, opt in self.bases:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for _, opt in self.bases:
            opt.step()


def base_kwargs_for(base: str, weight_decay: float, muon_ns_dtype: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"weight_decay": weight_decay}
    if base == "muon":
        kw["adjust_lr_fn"] = "match_rms_adamw"  # update RMS 0.2 like AdamW, so one lr scale serves every base
        kw["ns_dtype"] = getattr(torch, muon_ns_dtype)
    return kw


def max_rows_option(value: str) -> int | str:
    """The ``--max-rows`` flag as DoPr takes it: ``"auto"`` or a positive int."""
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--max-rows must be 'auto' or a positive integer (rows per forward), got {value!r}")
    return int(value)


def build_optimizer(model: nn.Module, arm: str, lr: float, spec: Any, exclude: tuple[str, ...] = ()) -> Any:
    """The arm's optimizer for ``model`` at ``lr``; every other choice comes from ``spec`` (a bench Spec): damping,
    weight_decay, aux_lr, sigma, refresh_every, max_block, max_rows and muon_ns_dtype (resolved, see
    :func:`hardware_ns_dtype`). DoPr options left at the library's defaults are not passed (max_rows always is).
    ``exclude``: fnmatch patterns of module names a DoPr arm leaves to its base optimizer (an ablation of which
    layers get AP); plain arms ignore it."""
    from dopr import DoPr
    from dopr.routing import DEFAULT_AUX_PATTERNS, build_bases

    base, use_dopr = parse_arm(arm)
    kw = base_kwargs_for(base, spec.weight_decay, spec.muon_ns_dtype or hardware_ns_dtype())
    aux_kwargs = {"weight_decay": spec.weight_decay}
    if use_dopr:
        dopr_kwargs: dict[str, Any] = {}
        if spec.sigma != "batch":
            dopr_kwargs["sigma"] = spec.sigma
        if spec.refresh_every != 1:
            dopr_kwargs["refresh_every"] = spec.refresh_every
        if spec.max_block is not None:
            dopr_kwargs["max_block"] = spec.max_block
        # always explicit: the bench's default is exact (the paper's Sigma over every row), whatever the library's
        dopr_kwargs["max_rows"] = None if spec.max_rows is None else max_rows_option(spec.max_rows)
        if exclude:
            dopr_kwargs["exclude"] = list(exclude)
        return DoPr(model, base=base, lr=lr, damping=spec.damping, aux_lr=spec.aux_lr, aux_kwargs=aux_kwargs,
                    **dopr_kwargs, **kw)
    bases, _ = build_bases(model, base, lr, kw, spec.aux_lr, aux_kwargs, DEFAULT_AUX_PATTERNS)
    return MultiOptimizer(bases)


def telemetry(opt: Any) -> dict[str, dict[str, Any]] | None:
    """DoPr's per-group statistics (scalars only) for results.json; None for plain arms or if unavailable."""
    if not hasattr(opt, "stats"):
        return None
    try:
        stats = opt.stats()
        return {k: {kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, str))} for k, v in stats.items()}
    except Exception:  # telemetry is optional
        return None
