"""Sigma is over exactly the rows whose gradients are in .grad, and the hooks live and die with their optimizer."""

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from dopr import DoPr
from dopr.tap import TappedParameter
from helpers import mlp


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g) * torch.logspace(1, -1, 5), torch.randn(16, 3, generator=g))
            for _ in range(n)]


def _run(extra_forward: bool, clear_between: str | None = None):
    torch.manual_seed(0)
    model = mlp()
    opt = DoPr(model, base="adamw", lr=1e-2)
    for x, y in _batches():
        opt.zero_grad()
        if extra_forward:  # a logging forward in train mode, never backpropagated
            model(x * 3 + 1).sum()
        if clear_between:  # an earlier micro-batch whose gradient is then thrown away
            ((model(x[:8] * 2) - y[:8]) ** 2).mean().backward()
            if clear_between == "module":
                model.zero_grad()
            else:
                for p in model.parameters():
                    p.grad = None
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model


def test_a_forward_that_is_never_backpropagated_does_not_enter_sigma():
    plain, logged = _run(False), _run(True)
    for p, q in zip(plain.parameters(), logged.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("how", ["module", "none"])
def test_a_cleared_gradient_clears_the_rows_collected_for_it(how):
    plain, cleared = _run(False), _run(False, clear_between=how)
    for p, q in zip(plain.parameters(), cleared.parameters()):
        assert torch.equal(p, q)


def _gan(separate_discriminator_copy: bool):
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    disc = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt_g, opt_d = DoPr(gen, lr=1e-2), DoPr(disc, lr=1e-2)
    g = torch.Generator().manual_seed(1)
    bce = nn.functional.binary_cross_entropy_with_logits
    for _ in range(4):
        real, z = torch.randn(32, 3, generator=g) * torch.tensor([3.0, 1.0, 0.1]), torch.randn(32, 4, generator=g)
        opt_d.zero_grad()
        d_real, d_fake = disc(real), disc(gen(z).detach())
        (bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))).backward()
        opt_d.step()
        opt_g.zero_grad()
        critic = copy.deepcopy(disc) if separate_discriminator_copy else disc  # a copy: disc never sees this
        d_gen = critic(gen(z))
        bce(d_gen, torch.ones_like(d_gen)).backward()
        opt_g.step()
    return gen, disc


def test_gan_with_two_doprs_matches_the_run_without_the_generator_steps_forwards_in_the_discriminator():
    (g1, d1), (g2, d2) = _gan(False), _gan(True)
    for p, q in zip([*g1.parameters(), *d1.parameters()], [*g2.parameters(), *d2.parameters()]):
        assert torch.equal(p, q)


def test_zero_grad_between_forward_and_backward_keeps_the_rows():  # Lightning's order
    torch.manual_seed(0)
    a = mlp()
    b = copy.deepcopy(a)
    opt_a, opt_b = DoPr(a, lr=1e-2), DoPr(b, lr=1e-2)
    for x, y in _batches():
        opt_a.zero_grad()
        ((a(x) - y) ** 2).mean().backward()
        opt_a.step()
        loss = ((b(x) - y) ** 2).mean()
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def _tapped(module):
    return type(module.weight) is TappedParameter


def test_taps_go_with_the_optimizer():
    model = mlp()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    opt = DoPr(model, lr=1e-3)
    ref = weakref.ref(opt)
    assert all(_tapped(m) for m in linears)  # Linear layers are captured where their weight is read
    del opt
    gc.collect()
    assert ref() is None
    assert all(type(m.weight) is nn.Parameter and not m._forward_hooks for m in linears)
    with DoPr(model, lr=1e-3) as opt:
        assert _tapped(model[0])
    assert not _tapped(model[0])
    opt = DoPr(model, lr=1e-3)
    opt.remove()
    opt.remove()  # idempotent
    assert type(model[0].weight) is nn.Parameter


def test_hooks_go_with_the_optimizer():
    # transposed convolutions are read at the call
    model = nn.Sequential(nn.ConvTranspose1d(2, 4, 3), nn.ReLU(), nn.ConvTranspose1d(4, 2, 3))
    opt = DoPr(model, lr=1e-3)
    ref = weakref.ref(opt)
    assert all(len(m._forward_hooks) == 1 for m in model if isinstance(m, nn.ConvTranspose1d))
    del opt
    gc.collect()
    assert ref() is None
    assert all(len(m._forward_hooks) == 0 for m in model)
    opt = DoPr(model, lr=1e-3)
    opt.remove()
    opt.remove()  # idempotent
    assert len(model[0]._forward_hooks) == 0


def test_a_second_preconditioner_on_the_same_layers_is_refused_with_the_fix():
    for model in (mlp(), nn.Sequential(nn.ConvTranspose1d(2, 4, 3))):  # tapped weights, and hooked modules
        first = DoPr(model, lr=1e-3)
        with pytest.raises(ValueError, match=r"remove\(\)"):
            DoPr(model, lr=1e-3)
        assert _tapped(model[0]) if isinstance(model[0], nn.Linear) else len(model[0]._forward_hooks) == 1
        DoPr(model, lr=1e-3, exclude=["*"])  # on disjoint layers (here: none) it is fine
        first.remove()
        second = DoPr(model, lr=1e-3)
        x = torch.randn(3, 5) if isinstance(model[0], nn.Linear) else torch.randn(3, 2, 6)
        model(x).sum().backward()
        second.step()
        assert second.stats()[next(iter(second.stats()))]["refreshes"] == 1  # the first left nothing behind
        second.remove()


def test_attention_modules_are_switched_back_when_the_optimizer_goes():
    model = nn.Sequential(nn.Linear(4, 8))
    model.attn = nn.MultiheadAttention(8, 2)
    opt = DoPr(model, lr=1e-3)
    assert type(model.attn) is not nn.MultiheadAttention
    del opt
    gc.collect()
    assert type(model.attn) is nn.MultiheadAttention


def test_summary_does_not_claim_ap_for_a_layer_that_recorded_nothing():
    class Sneaky(nn.Module):  # reads proj's weight only through a copy computed from it
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            return nn.functional.linear(x, self.proj.weight.clone(), self.proj.bias)

    model = Sneaky()
    opt = DoPr(model, lr=1e-3)
    assert "pending" in opt.summary()
    model(torch.randn(3, 4)).sum().backward()
    with pytest.warns(RuntimeWarning, match="recorded no input"):
        opt.step()
    line = next(ln for ln in opt.summary().splitlines() if ln.strip().startswith("proj.weight"))
    assert " no " in line and "yes" not in line


def test_copies_and_pickles_of_a_tapped_model_are_plain():
    """An EMA deepcopy and torch.save(model) hold plain parameters: the taps belong to the optimizer, not the model."""
    import io

    model = mlp()
    opt = DoPr(model, lr=1e-3)
    ema = copy.deepcopy(model)
    assert all(type(p) is nn.Parameter for p in ema.parameters())
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert all(type(p) is nn.Parameter for p in loaded.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters()))
    ema(torch.randn(3, 5)).sum().backward()  # the copy's forwards are not the model's
    model(torch.randn(3, 5)).sum().backward()
    opt.step()
    assert all(g["refreshes"] == 1 for g in opt.stats().values())


class _Switched(nn.Module):
    """The layers DoPr switches to a drop-in subclass (attention, an RNN stack) and one it hooks (ConvTranspose)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.rnn = nn.LSTM(8, 8, num_layers=2, batch_first=True)
        self.up = nn.ConvTranspose1d(8, 4, 3)

    def forward(self, x):
        a, _ = self.attn(x, x, x)
        return self.up(self.rnn(a)[0].transpose(1, 2))


def _plain_classes(model):
    return {type(m) for m in model.modules()} <= {_Switched, nn.MultiheadAttention, nn.LSTM, nn.ConvTranspose1d,
                                                   nn.modules.linear.NonDynamicallyQuantizableLinear}


def test_a_refused_second_preconditioner_leaves_the_first_ones_switches():
    torch.manual_seed(0)
    model = _Switched()
    opt = DoPr(model, lr=1e-3)
    switched = type(model.attn), type(model.rnn)
    assert switched[0] is not nn.MultiheadAttention and switched[1] is not nn.LSTM
    with pytest.raises(ValueError, match="already"):
        DoPr(model, lr=1e-3)
    assert (type(model.attn), type(model.rnn)) == switched
    model(torch.randn(2, 5, 8)).square().sum().backward()
    opt.step()
    assert all(s["refreshes"] == 1 for s in opt.stats().values()), opt.stats()  # attention and stack still seen
    opt.remove()
    assert _plain_classes(model)


def test_an_excluded_stack_is_not_switched_and_removing_one_preconditioner_keeps_the_others_switch():
    model = _Switched()
    first = DoPr(model, lr=1e-3, exclude=["rnn"])
    assert type(model.rnn) is nn.LSTM  # none of its layers gets AP: it keeps torch's fused forward
    second = DoPr(model, lr=1e-3, exclude=["attn", "attn.*", "up"])
    assert type(model.rnn) is not nn.LSTM
    first.remove()
    assert type(model.rnn) is not nn.LSTM and type(model.attn) is nn.MultiheadAttention
    second.remove()
    assert _plain_classes(model)


def test_a_module_built_as_the_drop_in_stays_one():
    from dopr.adapters.attention import CapturedMultiheadAttention

    model = nn.Sequential(CapturedMultiheadAttention(8, 2))
    DoPr(model, lr=1e-3).remove()
    assert type(model[0]) is CapturedMultiheadAttention


def test_copies_and_pickles_of_a_model_with_switched_and_hooked_layers_are_plain_and_work():
    """torch.save(model) and an EMA deepcopy, with DoPr attached: plain classes, inert hooks, the user's
    attributes on parameters kept, the same outputs; the model itself stays DoPr's."""
    import io

    torch.manual_seed(0)
    model = _Switched()
    model.up.weight.tag = "kept"
    opt = DoPr(model, lr=1e-3)
    x = torch.randn(2, 5, 8)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.up.weight.tag == "kept"  # as torch.save keeps it without DoPr (a deepcopy of a Parameter does not)
    for copied in (copy.deepcopy(model), loaded):
        assert _plain_classes(copied)
        assert all(type(p) is nn.Parameter for p in copied.parameters())
        assert torch.equal(copied(x), model(x))
        copied(x).sum().backward()  # its forwards and backwards are its own
    assert type(model.attn) is not nn.MultiheadAttention
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    assert all(s["refreshes"] == 1 for s in opt.stats().values())


def test_views_of_tapped_weights_save_as_plain_tensors():
    import io

    model = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(4, 4, 3))
    opt = DoPr(model, lr=1e-3)
    with torch.no_grad():  # nothing to follow without a gradient: plain tensors
        assert type(model[0].weight.t()) is torch.Tensor and type(model[1].weight.view(4, -1)) is torch.Tensor
    views = {"t": model[0].weight.t(), "cast": model[0].weight.double()}
    buf = io.BytesIO()
    torch.save(views, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    assert all(type(v) is torch.Tensor and torch.equal(v, views[k]) for k, v in loaded.items())
    opt.remove()
