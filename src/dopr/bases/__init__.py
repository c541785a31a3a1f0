"""Base optimizers the paper uses that torch.optim lacks (and a Muon whose Newton-Schulz precision is a choice)."""

from .adamuon import AdaMuon
from .muon import Muon
from .signum import Signum

__all__ = ["AdaMuon", "Muon", "Signum"]
