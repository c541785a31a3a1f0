"""The flow-matching bench (``dopr-bench run flow``): a generator of 8x8 digits.

A velocity field ``v(x_t, t)`` is trained with the (rectified) flow-matching loss: ``x_t = (1 - t) x_0 + t x_1``,
``x_0 ~ N(0, I)``, target ``x_1 - x_0``. Sampling integrates the model's own field with Euler steps (the rollout:
each step feeds on the model's previous output). Every arm gets the same data, initialization, minibatches, noise
and evaluation. Reported per run: the validation flow-matching loss (fixed noise and times on held-out digits) and
the sample quality of the EMA weights for several numbers of integration steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.bench import Bench, Metric
from ..core.report import dopr_options
from .report import make_plots, summary_markdown
from .spec import FlowSpec, planned, resolve
from .train import fixed_noise, train_flow


class Prepared:
    def __init__(self, spec: FlowSpec, task: str, cache: Path) -> None:
        from .data import evaluator, evaluator_fingerprint, load_digits_split

        self.spec = spec
        self.train_x, _, val_x, _ = load_digits_split()
        val_x0, val_t = fixed_noise(len(val_x), spec.val_draws, seed=4242)
        self.val = (val_x.repeat(spec.val_draws, 1), val_x0, val_t)
        self.judge = evaluator(cache)
        self.settings = {"evaluator": evaluator_fingerprint(self.judge), "train_images": len(self.train_x),
                         "val_images": len(val_x)}

    def info(self, old: dict[str, Any]) -> dict[str, Any]:
        return {}

    def run(self, arm: str, seed: int, lr: float, progress: Any) -> dict[str, Any]:
        return train_flow(arm, seed, lr, self.spec, self.train_x, self.val, self.judge, progress)

    def line(self, run: dict[str, Any]) -> str:
        best = min(q["frechet"] for q in run["quality"].values())
        return (f"{run['optimizer']:>14} lr {run['lr']:g} seed {run['seed']}: val loss {run['val_loss']:.4f}  best "
                f"Frechet {best:.1f}  ({run['wall_s']:.0f} s)")

    def close(self, results: dict[str, Any], out: Path) -> None:
        pass


def headline(results: dict[str, Any]) -> str:
    s = results["settings"]
    return f"8x8 digits, {s['steps']} steps, FD after {max(s['integration_steps'])} Euler steps" + dopr_options(s)


BENCH = Bench(
    name="flow", help="flow-matching generator of 8x8 digits: sample quality against the number of Euler steps",
    spec_type=FlowSpec, tasks=("digits",), default_task="digits", resolve=resolve, planned=planned,
    data_keys=frozenset({"evaluator", "train_images", "val_images"}), prepare=Prepared,
    val=Metric("val FM loss", lambda r: r["val_loss"], False, lambda v: f"{v:.4f}"),
    test=Metric("FD", lambda r: r["quality"][max(r["quality"], key=int)]["frechet"], False, lambda v: f"{v:.1f}"),
    summary=summary_markdown, plots=make_plots, headline=headline, out_name=lambda task, spec: "flow")
