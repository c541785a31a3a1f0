"""dopr_bench: test-time-feedback benchmarks for DoPr (behavior cloning with closed-loop rollouts on MuJoCo).

The ``dopr`` library never imports this package.
"""

__version__ = "0.1.0"
