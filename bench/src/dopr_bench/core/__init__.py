"""The bench core every bench uses; no bench imports another.

- :mod:`.spec`: the common options and the CLI flags built from a bench's ``Spec`` dataclass;
- :mod:`.arms`: arm names, the optimizer factory and the one Muon Newton-Schulz precision policy;
- :mod:`.bench`: what a bench provides (:class:`~.bench.Bench`) and the registry of the four benches;
- :mod:`.sweep`: arms x seeds x learning rates: validate, record, resume, save atomically, report;
- :mod:`.results`: the results schema, provenance, resuming and merging;
- :mod:`.stats`: mean ± 95% t-interval and paired DoPr − base differences;
- :mod:`.report`: summary.md for any bench, the learning-rate section and the plain sentences per pair;
- :mod:`.plots`, :mod:`.progress`, :mod:`.index` (the README's results table), :mod:`.nets` (EMA, shared layers).
"""

from __future__ import annotations

import os
from pathlib import Path

#: root of every cached artefact (demonstrations, pretrained models, evaluators); DOPR_BENCH_CACHE overrides.
CACHE = Path(os.environ.get("DOPR_BENCH_CACHE", Path.home() / ".cache" / "dopr_bench"))
#: env seeds of the control and manipulation benches: training demos start at TRAIN_SEED, validation demos at
#: VAL_SEED, evaluation rollouts at EVAL_SEED.
TRAIN_SEED, VAL_SEED, EVAL_SEED = 0, 5_000, 100_000
