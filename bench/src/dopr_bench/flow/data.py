"""Data and the fixed evaluator for the flow-matching generative bench.

Data: scikit-learn's bundled 8x8 digits (1,797 real images, shipped inside the package, nothing is
downloaded), scaled to [-1, 1], split once by a fixed seed into train and held-out validation.

Evaluator: a small classifier trained once on all digits with a fixed seed and then frozen (cached
on disk, loaded with ``weights_only=True``). Sample quality is measured in its feature space:
the Frechet distance between Gaussian fits of generated and held-out real features (FID-style),
class coverage (how many of the 10 classes receive at least 2% of the samples), the KL divergence
of the predicted-class histogram from uniform, and the mean classifier confidence.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

SPLIT_SEED = 12345
EVALUATOR_SEED = 0


def load_digits_split(val_fraction: float = 0.22) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, val_x, val_y); images flattened to 64 values in [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 8.0 - 1.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = int(round(val_fraction * len(x)))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


class DigitClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def _train_evaluator(steps: int = 1500) -> DigitClassifier:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 8.0 - 1.0
    y = torch.tensor(digits.target, dtype=torch.long)
    torch.manual_seed(EVALUATOR_SEED)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(EVALUATOR_SEED)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        # light noise makes the features respond smoothly to imperfect samples
        xb = x[idx] + 0.1 * torch.randn(len(idx), 64, generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), y[idx]).backward()
        opt.step()
    return model.eval()


def evaluator(cache: Path) -> DigitClassifier:
    """The frozen evaluator: trained on first use, then loaded from ``cache``."""
    path = cache / "flow" / "digits-evaluator-v1.pt"
    model = DigitClassifier()
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except Exception as err:  # a truncated or foreign file: say so, then retrain
            print(f"evaluator cache {path} unreadable ({type(err).__name__}: {err}); retraining it")
    model = _train_evaluator()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model


def evaluator_fingerprint(model: DigitClassifier) -> str:
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:12]


@torch.no_grad()
def features_and_probs(model: DigitClassifier, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = model.features(x.clamp(-1.5, 1.5))
    return f.double().numpy(), torch.softmax(model.out(f), dim=-1).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two feature sets (rows are samples)."""
    import warnings

    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # near-singular covariances (mode collapse) are part of what is measured
        warnings.simplefilter("ignore")
        covmean, _ = linalg.sqrtm(ca @ cb, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def sample_quality(model: DigitClassifier, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    fs, ps = features_and_probs(model, samples)
    fr, _ = features_and_probs(model, reference)
    hist = np.bincount(ps.argmax(1), minlength=10) / len(ps)
    nz = hist[hist > 0]
    return {
        "frechet": frechet_distance(fs, fr),
        "coverage": int((hist >= 0.02).sum()),
        "kl_uniform": float((nz * np.log(nz * 10)).sum()),
        "confidence": float(ps.max(1).mean()),
    }
