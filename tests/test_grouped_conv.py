"""Grouped and depthwise convolutions (issue 22): each group of output channels is a layer of its own.

Group g's output channels read only group g's input channels, so by the invariance principle each group gets the
Sigma of its own patches (and its own lambda); the groups are factorized in one batched call (dopr.factors.Grouped).
Checked against the float64 reference, and against ``groups`` separate convolutions holding the same weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dopr import DoPr
from dopr.factors import Grouped
from helpers import max_rel_diff, train_fast, train_reference

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class Net(nn.Module):
    def __init__(self, spatial: int, groups: int, depthwise_bias: bool, channels: int = 4) -> None:
        super().__init__()
        conv = CONV[spatial]
        self.grouped = conv(channels, 6, 3, padding=1, stride=1 if spatial == 3 else 2, groups=groups)
        self.depthwise = conv(6, 6, 3, padding="same", groups=6, bias=depthwise_bias)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.depthwise(torch.tanh(self.grouped(x))))
        return self.head(h.flatten(2).mean(-1))


def _batches(spatial: int, channels: int = 4) -> list:
    g = torch.Generator().manual_seed(1)
    size = {1: (9,), 2: (7, 7), 3: (4, 4, 4)}[spatial]
    scale = torch.logspace(1, -1, channels, dtype=torch.float64).reshape(1, -1, *([1] * spatial))
    return [[(torch.randn(3, channels, *size, generator=g, dtype=torch.float64) * scale,
              torch.randn(3, 2, generator=g, dtype=torch.float64))] for _ in range(3)]


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("groups,depthwise_bias", [(2, True), (2, False), (1, True)])
def test_grouped_convolutions_match_the_reference(spatial, groups, depthwise_bias):
    torch.manual_seed(0)
    model = Net(spatial, groups, depthwise_bias).double()
    ref, before = copy.deepcopy(model), copy.deepcopy(model)
    opt = train_fast(model, _batches(spatial), 3)
    train_reference(ref, _batches(spatial), 3)
    assert max_rel_diff(model, ref) < 1e-9
    assert max_rel_diff(model, before) > 1e-3
    ap = opt.preconditioner
    assert set(ap.layers) == {"grouped", "depthwise", "head"} and not ap.skipped
    assert isinstance(ap.groups["depthwise"].factor, Grouped) and ap.groups["depthwise"].factor.tensor.shape[0] == 6


class Separate(nn.Module):
    """A grouped convolution written as ``groups`` convolutions over channel slices, outputs concatenated."""

    def __init__(self, grouped: nn.Conv2d) -> None:
        super().__init__()
        g, c_in, c_out = grouped.groups, grouped.in_channels // grouped.groups, grouped.out_channels // grouped.groups
        self.parts = nn.ModuleList(nn.Conv2d(c_in, c_out, grouped.kernel_size, grouped.stride, grouped.padding)
                                   for _ in range(g))
        with torch.no_grad():
            for i, part in enumerate(self.parts):
                part.weight.copy_(grouped.weight[i * c_out:(i + 1) * c_out])
                part.bias.copy_(grouped.bias[i * c_out:(i + 1) * c_out])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[1] // len(self.parts)
        return torch.cat([part(x[:, i * width:(i + 1) * width]) for i, part in enumerate(self.parts)], dim=1)


def test_a_grouped_convolution_steps_as_its_groups_written_separately():
    torch.manual_seed(0)
    grouped = nn.Conv2d(6, 9, 3, padding=1, groups=3)
    separate = Separate(grouped)
    x = torch.randn(4, 6, 5, 5) * torch.logspace(1, -1, 6).reshape(1, -1, 1, 1)
    for model in (grouped, separate):
        opt = DoPr(model, lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for i, part in enumerate(separate.parts):
        torch.testing.assert_close(grouped.weight[i * 3:(i + 1) * 3], part.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grouped.bias[i * 3:(i + 1) * 3], part.bias, rtol=1e-5, atol=1e-6)


def test_grouped_statistics_resume_bit_exactly():
    torch.manual_seed(0)
    model = Net(2, 2, True)
    batches = [x.float() for [(x, _)] in _batches(2)]
    opt = DoPr(model, lr=1e-2)

    def step(m, o, x):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()

    step(model, opt, batches[0])
    other = copy.deepcopy(model)
    resumed = DoPr(other, lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for x in batches[1:]:
        step(model, opt, x)
        step(other, resumed, x)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))


class TransposedNet(nn.Module):
    """Grouped transposed convolutions (a decoder's upsampling), stride 2 with output padding, and depthwise."""

    def __init__(self, spatial: int) -> None:
        super().__init__()
        conv_t = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[spatial]
        self.up = conv_t(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.depthwise = conv_t(6, 6, 3, padding=1, groups=6, bias=False)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.depthwise(torch.tanh(self.up(x)))).flatten(2).mean(-1))


@pytest.mark.parametrize("spatial", [1, 2])
def test_grouped_transposed_convolutions_match_the_reference(spatial):
    torch.manual_seed(0)
    model = TransposedNet(spatial).double()
    ref, before = copy.deepcopy(model), copy.deepcopy(model)
    opt = train_fast(model, _batches(spatial), 3)
    train_reference(ref, _batches(spatial), 3)
    assert max_rel_diff(model, ref) < 1e-9
    assert max_rel_diff(model, before) > 1e-3
    assert set(opt.preconditioner.layers) == {"up", "depthwise", "head"}
    assert isinstance(opt.preconditioner.groups["up"].factor, Grouped)


def test_a_grouped_transposed_convolution_steps_as_its_groups_written_separately():
    torch.manual_seed(0)
    grouped = nn.ConvTranspose1d(6, 4, 3, stride=2, groups=2)
    c_in, c_out = 3, 2
    parts = nn.ModuleList(nn.ConvTranspose1d(c_in, c_out, 3, stride=2) for _ in range(2))
    with torch.no_grad():
        for i, part in enumerate(parts):
            part.weight.copy_(grouped.weight[i * c_in:(i + 1) * c_in])
            part.bias.copy_(grouped.bias[i * c_out:(i + 1) * c_out])
    x = torch.randn(4, 6, 5) * torch.logspace(1, -1, 6).reshape(1, -1, 1)

    def separate(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x[:, i * c_in:(i + 1) * c_in]) for i, part in enumerate(parts)], dim=1)

    for model, forward in ((grouped, grouped), (parts, separate)):
        opt = DoPr(model, lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            forward(x).pow(2).mean().backward()
            opt.step()
    for i, part in enumerate(parts):
        torch.testing.assert_close(grouped.weight[i * c_in:(i + 1) * c_in], part.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grouped.bias[i * c_out:(i + 1) * c_out], part.bias, rtol=1e-5, atol=1e-6)
