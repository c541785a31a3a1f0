"""DoPr with defaults on tiny, randomly initialized models of the kinds users train (see zoo.py).

For each: the share of trainable weight-matrix elements that get AP, that every other weight matrix is
named with a reason (no silent omission), that every preconditioned layer really recorded statistics,
that the loss falls, and that a checkpoint resumes bit for bit.
"""

import io
import warnings

import pytest
import torch

from dopr import DoPr
from dopr.reporting import parameter_status
from zoo import HF, ZOO

# the only weight matrix without AP, named with its reason: a raw positional-embedding parameter (no layer input)
NAMED = {"vit_mha": {"pos": "no DoPr adapter for _Encoder"},
         # Mamba's state matrix: a parameter of the scan, not the weight of a layer reading an input
         "mamba": {f"backbone.layers.{i}.mixer.A_log": "no DoPr adapter for MambaMixer" for i in range(2)}}
# embeddings whose weight is shared with layers that are called, but which are never called themselves
UNUSED = {"t5": {"shared"}}


def _build(name):
    if name in HF:
        pytest.importorskip("transformers")
        pytest.importorskip("peft")
    if name == "unet2d_diffusers":
        pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return ZOO[name]()


def _train(model, loss_fn, opt, steps, seed):
    torch.manual_seed(seed)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", sorted(ZOO))
def test_coverage_and_training(name):
    model, loss_fn = _build(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = DoPr(model, lr=3e-3)
    ap = opt.preconditioner
    uncovered = ap.discovery.unexpected()
    expected = NAMED.get(name, {})
    assert set(uncovered) == set(expected)
    assert all(expected[n] in why for n, why in uncovered.items())
    named = [w for w in caught if "without AP" in str(w.message)]
    assert len(named) == (1 if uncovered else 0)  # one warning, naming each
    cov = ap.coverage()
    left_out = sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert cov["preconditioned_elements"] + left_out == cov["weight_elements"]  # nothing else left out
    assert cov["share"] >= 0.95
    preconditioned = {id(p) for p in ap.preconditioned_parameters()}
    losses = _train(model, loss_fn, opt, 4, seed=1)
    assert losses[-1] < losses[0]
    unused = UNUSED.get(name, set())
    assert {ap.layer_status(n) for n in ap.layers if n not in unused} == {"yes"}  # every layer recorded its input
    assert all(ap.layer_status(n).startswith("unused") for n in unused)
    status = parameter_status(ap)
    assert {status[n] for n, p in model.named_parameters() if id(p) in preconditioned} == {"yes"}
    assert {status[n] for n in uncovered} == {f"no: {why}" for why in uncovered.values()}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_resume_is_bit_exact(name):
    model, loss_fn = _build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = DoPr(model, lr=3e-3)
        _train(model, loss_fn, opt, 2, seed=1)
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
        _train(model, loss_fn, opt, 2, seed=2)
        opt.remove()
        fresh, _ = _build(name)
        buf.seek(0)
        saved = torch.load(buf, weights_only=True)
        fresh.load_state_dict(saved["model"])
        opt2 = DoPr(fresh, lr=3e-3)
        opt2.load_state_dict(saved["opt"])
        _train(fresh, loss_fn, opt2, 2, seed=2)
    for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), n
