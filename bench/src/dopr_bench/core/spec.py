"""Bench specs: one frozen dataclass per bench is the single source of its defaults, and its CLI flags are built
from it. :class:`Common` holds the fields every bench has (the sweep and the optimizer options).

Field metadata (see :func:`opt`): ``help``; ``choices``; ``setting=False`` for fields that do not define what a
result folder holds (the sweep grid, where outputs go, a model path that is recorded otherwise); ``cli=False`` for
fields that are not flags (fixed by the task).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

ARMS = ("adamw", "dopr-adamw", "muon", "dopr-muon")


def opt(default: Any, help: str = "", *, choices: tuple[str, ...] | None = None, setting: bool = True,
        cli: bool = True) -> Any:
    """A spec field with its CLI help (a ``dataclasses.field``)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "setting": setting,
                                                        "cli": cli})


@dataclass(frozen=True)
class Common:
    optimizers: tuple[str, ...] = opt(ARMS, "comma-separated arms: adamw, adam, sgd, signum, muon, adamuon, each "
                                            "optionally prefixed by dopr-", setting=False)
    seeds: int = opt(3, "number of seeds (first-seed .. first-seed + N - 1)", setting=False)
    first_seed: int = opt(0, "first seed", setting=False)
    lrs: tuple[float, ...] = opt((1e-3,), "comma-separated learning rates swept for every arm (DoPr arms use their "
                                          "base's lr)", setting=False)
    damping: float = opt(0.1, "DoPr damping gamma (lambda = gamma tr(Sigma)/d)")
    dampings: tuple[float, ...] | None = opt(None, "comma-separated dampings crossed with --lrs for the DoPr arms "
                                                   "(base arms run once per lr; default: --damping alone)",
                                             setting=False)
    weight_decay: float = opt(0.0, "decoupled weight decay of every arm")
    aux_lr: float | None = opt(None, "lr of the AdamW that takes the parameters Muon does not (default: the lr)")
    sigma: str = opt("batch", "DoPr's Sigma: this step's ('batch', the paper's) or an EMA across refreshes",
                     choices=("batch", "ema"))
    refresh_every: int = opt(1, "DoPr: recompute Sigma and its factorization every k steps (1: the paper's)")
    max_block: int | None = opt(None, "DoPr: block-diagonal Sigma for layers with more inputs than this")
    max_rows: str | None = opt(None, "DoPr: estimate Sigma from at most this many rows per forward: an int, or "
                                     "'auto' (max(4 per input dimension, 1024)); default every row (exact)")
    muon_ns_dtype: str | None = opt(None, "Newton-Schulz precision of the Muon arms (default: from the hardware, "
                                          "bfloat16 where its matmuls are fast, else float32; a result folder keeps "
                                          "the precision it was made with)", choices=("bfloat16", "float32"))

    def settings(self) -> dict[str, Any]:
        """What defines a result folder: every field with ``setting`` metadata, tuples as lists (as in JSON)."""
        out = {}
        for f in fields(self):
            if f.metadata.get("setting", True):
                v = getattr(self, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of an annotation."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _parser_for(tp: Any) -> Any:
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        return lambda s: tuple(item(x.strip()) for x in s.split(",") if x.strip())
    return tp


def add_flags(parser: argparse.ArgumentParser, spec_type: type, shown: Any = None) -> None:
    """One ``--flag`` per CLI field of ``spec_type`` (default None: only what is given overrides the spec); the help
    shows the defaults of ``shown`` (the task's spec) if given, else the class's."""
    hints = typing.get_type_hints(spec_type)
    for f in fields(spec_type):
        if not f.metadata.get("cli", True):
            continue
        tp, _ = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = getattr(shown, f.name) if shown is not None else f.default
        text = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{f.metadata.get('help', '')} (default {text})".strip()
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_parser_for(tp), default=None, choices=f.metadata.get("choices"),
                                help=help_text, metavar=f.name.upper() if typing.get_origin(tp) is not tuple
                                else "A,B,...")


def overrides(args: argparse.Namespace, spec_type: type) -> dict[str, Any]:
    """The spec fields given on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(spec_type)
            if f.metadata.get("cli", True) and getattr(args, f.name, None) is not None}
