"""dopr_bench: test-time-feedback benchmarks for DoPr: optimizers judged by what their models do when rolled out.

Four benches (``bc``: behavior cloning on MuJoCo control; ``lm``: LM fine-tuning judged by generations; ``flow``:
a flow-matching generator; ``robo``: robosuite from images) on one core (:mod:`dopr_bench.core`). The ``dopr``
library never imports this package.
"""

from ._version import __version__

__all__ = ["__version__"]
