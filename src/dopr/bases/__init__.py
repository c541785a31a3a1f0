"""Base optimizers the paper uses that torch.optim lacks."""

from .adamuon import AdaMuon
from .signum import Signum

__all__ = ["AdaMuon", "Signum"]
