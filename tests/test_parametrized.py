"""Layers whose weight is computed from other parameters (spectral_norm, both weight_norm APIs): named and left to
the base optimizer, their weight never read by DoPr (a spectral-norm read in training mode runs a power iteration),
resume bit-exact, no read of a non-leaf ``.grad``, and any order of such models in one process."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from dopr import DoPr


def sn_gan_discriminator() -> nn.Module:
    return nn.Sequential(parametrizations.spectral_norm(nn.Conv2d(3, 8, 3)), nn.LeakyReLU(0.2),
                         parametrizations.spectral_norm(nn.Conv2d(8, 8, 3)), nn.Flatten(),
                         parametrizations.spectral_norm(nn.Linear(8 * 4 * 4, 1)))


def weight_norm_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), parametrizations.weight_norm(nn.Linear(3 * 8 * 8, 16)), nn.Tanh(),
                         nn.Linear(16, 1))


def old_weight_norm_net() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated, still used
        return nn.Sequential(nn.Flatten(), nn.utils.weight_norm(nn.Linear(3 * 8 * 8, 16)), nn.Tanh(),
                             nn.Linear(16, 1))


MODELS: dict[str, tuple[Callable[[], nn.Module], set[str]]] = {
    "spectral_norm": (sn_gan_discriminator, {"0", "2", "4"}),
    "weight_norm": (weight_norm_net, {"1"}),
    "old weight_norm": (old_weight_norm_net, {"1"}),
}
X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def build(kind: str) -> tuple[nn.Module, DoPr]:
    torch.manual_seed(0)
    model = MODELS[kind][0]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the named layers; checked below
        return model, DoPr(model, base="adamw", lr=1e-2)


def train(model: nn.Module, opt: DoPr, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        model(X).pow(2).mean().backward()
        opt.step()


def check(kind: str) -> None:
    model, opt = build(kind)
    derived = MODELS[kind][1]
    skipped = opt.preconditioner.skipped
    assert derived <= set(skipped) and all("weight" in skipped[n] for n in derived), skipped
    assert not derived & set(opt.preconditioner.layers)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*non-leaf Tensor.*")  # no read of a non-leaf .grad
        train(model, opt, 3)
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
        train(model, opt, 3)
        buffer.seek(0)
        saved = torch.load(buffer)
        resumed, resumed_opt = build(kind)
        resumed.load_state_dict(saved["model"])
        resumed_opt.load_state_dict(saved["opt"])
        train(resumed, resumed_opt, 3)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{kind}: {name} differs after resuming"


@pytest.mark.parametrize("order", [list(MODELS), list(reversed(MODELS))], ids=["forward", "reversed"])
def test_derived_weights_are_named_resume_bit_exact_in_any_order(order: list[str]) -> None:
    for kind in order:
        check(kind)


def test_the_summary_names_the_parametrization() -> None:
    _, opt = build("spectral_norm")
    assert "parametrized weight (_SpectralNorm)" in opt.summary()
    assert "no DoPr adapter for ParametrizationList" not in opt.summary()
