"""Feature-learning diagnostics of a trained policy (issue 15, item 7), recorded per run beside the state drift.

Do they predict the rollout better than the validation loss? ``dopr-bench diagnostics`` (``bc/predictors.py``)
gives the rank correlation of each with the return across runs. Every arm gets the same
measurements, on the validation states:

- ``input_log10_cond``: per linear layer, ``log10`` of the condition number of its input second moment
  ``E[z z^T]`` (bias column left out): how anisotropic the features each layer learns from are;
- ``feature_cka_expert``: linear CKA (Kornblith et al., 2019) between the policy's first hidden features
  ``relu(inp(norm(s)))`` and the expert's first hidden features on the same states (PPO experts; NaN for the
  LQR controller, which has none): how close the first layer's feature subspace is to the expert's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

#: eigenvalues below this fraction of the largest count as zero (a rank-deficient second moment)
_EIG_FLOOR = 1e-12


@torch.no_grad()
def input_log10_cond(model: nn.Module, obs: torch.Tensor) -> dict[str, float]:
    """Module name -> log10 condition number of its input's second moment over ``obs`` (float64)."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, name=name: inputs.__setitem__(name, args[0]))
             for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        model(obs)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, z in inputs.items():
        z = z.double().flatten(0, -2)
        eig = torch.linalg.eigvalsh(z.T @ z / z.shape[0])
        top = float(eig[-1])
        out[name] = float(np.log10(top / max(float(eig[0]), top * _EIG_FLOOR))) if top > 0 else float("nan")
    return out


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two feature matrices over the same rows: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` after
    centering; 1 for features equal up to rotation and isotropic scaling, invariant to both."""
    x, y = x - x.mean(0), y - y.mean(0)
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / den) if den > 0 else float("nan")


@torch.no_grad()
def first_features(model: nn.Module, obs: torch.Tensor) -> np.ndarray:
    """The ResidualMLP's first hidden features ``relu(inp(norm(obs)))``."""
    return torch.relu(model.inp(model.norm(obs))).double().numpy()


@torch.no_grad()
def expert_first_features(expert: Any, obs: np.ndarray) -> np.ndarray | None:
    """The PPO expert's first hidden features (after its tanh) on raw ``obs``; None for experts without an MLP."""
    net = getattr(expert, "net", None)
    if net is None:
        return None
    x = torch.from_numpy(expert.normalize(np.asarray(obs, dtype=np.float64)))
    return net[1](net[0](x)).numpy()


def diagnostics(model: nn.Module, obs: torch.Tensor, expert_features: np.ndarray | None) -> dict[str, Any]:
    """The run record's diagnostics (see the module docstring) of the evaluated ``model`` on states ``obs``."""
    cka = float("nan") if expert_features is None else linear_cka(first_features(model, obs), expert_features)
    return {"input_log10_cond": input_log10_cond(model, obs), "feature_cka_expert": cka}
