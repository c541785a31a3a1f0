"""dopr: Double Preconditioning (DoPr) for PyTorch.

``DoPr(model, base="adamw", lr=...)`` right-multiplies each supported layer's gradient by the damped
inverse second moment of that layer's inputs, then hands the result to any base optimizer.
"""

from ._version import __version__
from .adapters.attention import CapturedMultiheadAttention
from .bases import AdaMuon, Muon, Signum
from .functional import Factors, apply_cholesky, apply_factor, apply_inverse, factorize, second_moment_sum
from .optimizer import DoPr
from .options import APOptions
from .preconditioner import ActivationPreconditioner, NonFiniteError
from .routing import BASES

__all__ = [
    "__version__",
    "BASES",
    "APOptions",
    "ActivationPreconditioner",
    "AdaMuon",
    "CapturedMultiheadAttention",
    "DoPr",
    "Muon",
    "Factors",
    "NonFiniteError",
    "Signum",
    "apply_cholesky",
    "apply_factor",
    "apply_inverse",
    "factorize",
    "second_moment_sum",
]
