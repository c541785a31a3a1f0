"""Second-order peers of DoPr as optional arms of ``overhead.py`` (``pip install -e ".[peers]"``).

Each peer is named ``package:optimizer@frequency``: ``every`` updates its preconditioner every step (the cost
comparable to DoPr's exact mode), ``default`` at the package's own default frequency. A peer whose package is
not installed is reported and left out; none of them is a dependency of dopr.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from torch import nn
from torch.optim import Optimizer

PEERS = ("po-soap", "po-shampoo", "hb-soap", "hb-psgd", "singd")
#: steps between preconditioner updates at each package's default; None: a schedule (heavyball's SOAP) or an
#: update probability (PSGD), not a fixed period
DEFAULT_PERIOD: dict[str, int | None] = {"po-soap": 10, "po-shampoo": 1000, "hb-soap": None, "hb-psgd": None,
                                         "singd": 10}
#: the longest cycle overhead.py times in one round; a scheduled peer is timed over windows of this many steps
MAX_CYCLE = 10
_PACKAGES = {"po": "pytorch_optimizer", "hb": "heavyball", "singd": "singd"}


def _soap_po(model: nn.Module, lr: float, every: bool) -> Optimizer:
    from pytorch_optimizer import SOAP

    return SOAP(model.parameters(), lr=lr, **({"precondition_frequency": 1} if every else {}))


def _shampoo_po(model: nn.Module, lr: float, every: bool) -> Optimizer:
    from pytorch_optimizer import ScalableShampoo

    kw = {"preconditioning_compute_steps": 1, "start_preconditioning_step": 1} if every else {}
    return ScalableShampoo(model.parameters(), lr=lr, **kw)


def _eager_heavyball() -> None:
    """heavyball compiles its kernels with max-autotune by default, which on a CPU spends minutes autotuning before
    the first step; every other arm here runs eagerly, so heavyball does too."""
    import heavyball.utils

    heavyball.utils.compile_mode = None


def _soap_hb(model: nn.Module, lr: float, every: bool) -> Optimizer:
    import heavyball

    _eager_heavyball()

    kw = {"precondition_frequency": 1, "use_precond_schedule": False} if every else {}
    return heavyball.SOAP(model.parameters(), lr=lr, **kw)


def _psgd_hb(model: nn.Module, lr: float, every: bool) -> Optimizer:
    import heavyball

    _eager_heavyball()

    kw = {"preconditioner_update_probability": 1.0} if every else {}
    return heavyball.PSGDKron(model.parameters(), lr=lr, **kw)


def _singd(model: nn.Module, lr: float, every: bool) -> Optimizer:
    from singd.optim.optimizer import SINGD

    return SINGD(model, lr=lr, warn_unsupported=False, **({"T": 1} if every else {}))


_MAKERS: dict[str, Callable[[nn.Module, float, bool], Optimizer]] = {
    "po-soap": _soap_po, "po-shampoo": _shampoo_po, "hb-soap": _soap_hb, "hb-psgd": _psgd_hb, "singd": _singd}


def available(name: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[name.split("-")[0]]) is not None


def cycle(spec: str) -> tuple[int, str]:
    """Steps per timed round of a peer (so its periodic update is amortized) and a note when it cannot be."""
    name, _, freq = spec.partition("@")
    if freq == "every":
        return 1, ""
    period = DEFAULT_PERIOD[name]
    if period is None:
        return MAX_CYCLE, f"{spec}: its update follows a schedule; each round times {MAX_CYCLE} steps in a row"
    if period > MAX_CYCLE:
        return 1, (f"{spec}: its preconditioner is recomputed every {period} steps, never within the timed steps "
                   "(statistics every step): the ratio leaves that update out")
    return period, ""


def make_peer(spec: str, model: nn.Module, lr: float) -> Optimizer:
    """``"po-soap@every"`` -> that optimizer on ``model``; raises ValueError naming the known peers."""
    name, _, freq = spec.partition("@")
    if name not in _MAKERS or freq not in ("every", "default"):
        raise ValueError(f"unknown peer {spec!r}: use one of {list(PEERS)} followed by @every or @default")
    return _MAKERS[name](model, lr, freq == "every")
