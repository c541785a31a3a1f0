"""DoPr preconditions the policy's Conv2d layers (as well as its Linear layers)."""

import torch
from torch import nn

from dopr import ActivationPreconditioner
from dopr.reference import ReferenceAP
from dopr_bench.core.arms import build_optimizer
from dopr_bench.robo.policy import FlowPolicy
from dopr_bench.robo.spec import RoboSpec

CAMS = ("agentview", "robot0_eye_in_hand")


def _tiny() -> FlowPolicy:
    return FlowPolicy(CAMS, low_dim=9, act_dim=7, horizon=4, width=32, blocks=1, channels=8, keypoints=4, feat=8)


def _batch(b: int = 3):
    g = torch.Generator().manual_seed(0)
    images = {c: torch.randint(0, 256, (b, 84, 84, 3), dtype=torch.uint8, generator=g) for c in CAMS}
    return images, torch.randn(b, 9, generator=g), torch.randn(b, 4, 7, generator=g), torch.randn(b, 28, generator=g), \
        torch.rand(b, generator=g)


def test_summary_lists_every_conv_with_ap():
    model = _tiny()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8  # 4 per camera
    opt = build_optimizer(model, "dopr-adamw", 1e-3, RoboSpec())
    model.loss(*_batch()).backward()
    opt.step()
    text = opt.summary()
    for name in convs:
        assert f"AP   {name}  (Sigma" in text, name
        assert f"{name}.weight" in text
    stats = opt.stats()
    for name in convs:
        assert stats[name]["refreshes"] == 1 and stats[name]["missing_statistics"] == 0


def test_conv_gradients_match_the_reference():
    """G (Sigma + lambda I)^-1 on the unfolded patches of each conv layer, against dopr's slow reference."""
    model = _tiny()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    ref_model = _tiny()
    ref_model.load_state_dict(model.state_dict())
    ap = ActivationPreconditioner(model, damping=0.1)
    ref = ReferenceAP(ref_model, damping=0.1, modules=convs)
    batch = _batch(2)
    model.train(), ref_model.train()
    model.loss(*batch).backward()
    ref_model.loss(*batch).backward()
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    ap.precondition_()
    ref.precondition_()
    mods, ref_mods = dict(model.named_modules()), dict(ref_model.named_modules())
    for name in convs:
        got, want = mods[name].weight.grad, ref_mods[name].weight.grad
        assert not torch.allclose(got, raw[f"{name}.weight"])
        torch.testing.assert_close(got.double(), want.double(), rtol=2e-3, atol=1e-6)
