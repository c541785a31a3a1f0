"""Reads of a weight that are neither a module call nor a plain ``F.linear``: the tap follows them exactly.

* ``F.multi_head_attention_forward`` given separate q/k/v Linear weights and an out-projection weight (WavLM):
  the q/k/v weights are read by the function's own in-projections, the out-projection by its attention output;
* an embedding table normalized as a whole, ``F.layer_norm(table)`` (SEW-D's relative positions): the rows of
  ``I @ table``, each row read once;
* any other op computing a tensor from a tapped weight (``torch.cat`` of weights, MobileBERT's head) is named in
  the warning of the layer it leaves without statistics.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dopr import DoPr

D, HEADS, T, B = 8, 2, 5, 3


class SeparateWeightAttention(nn.Module):
    """WavLM's attention: four Linear modules, none called; their weights go into the functional attention."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(D, D) for _ in range(4))

    def forward(self, x: torch.Tensor, out_proj_weight: torch.Tensor | None = None) -> torch.Tensor:
        h = x.transpose(0, 1)
        out, _ = F.multi_head_attention_forward(
            h, h, h, D, HEADS, torch.empty([0]), torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)),
            None, None, False, 0.0, self.out_proj.weight if out_proj_weight is None else out_proj_weight,
            None if out_proj_weight is not None else self.out_proj.bias, self.training, None, need_weights=True,
            use_separate_proj_weight=True, q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight)
        return out.transpose(0, 1)


def _with_ones(z: torch.Tensor) -> torch.Tensor:
    z = z.reshape(-1, z.shape[-1]).double()
    return torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], dim=1)


def _gram(z: torch.Tensor) -> torch.Tensor:
    z = _with_ones(z)
    return z.T @ z


def _sum_of_rows(group) -> torch.Tensor:
    return group.total.double()


def test_separate_weight_attention_reads_are_exact():
    torch.manual_seed(0)
    model = SeparateWeightAttention()
    x = torch.randn(B, T, D)
    want = model(x)
    # the attention output before the out-projection: the same function with an identity out-projection
    attended = model(x, out_proj_weight=torch.eye(D)).detach()
    opt = DoPr(model, lr=1e-3)
    ap = opt.preconditioner
    got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # the taps change no number of the forward
    got.square().sum().backward()
    for name in ("q_proj", "k_proj", "v_proj"):
        torch.testing.assert_close(_sum_of_rows(ap.groups[ap.layers[name].group]), _gram(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_sum_of_rows(ap.groups[ap.layers["out_proj"].group]), _gram(attended),
                               rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opt.step()
    assert all(s["missing_statistics"] == 0 for s in opt.stats().values())


class NormalizedTable(nn.Module):
    """SEW-D's relative positions: the whole table layer-normalized, then a slice of it projected."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(6, D)
        self.norm = nn.LayerNorm(D)
        self.proj = nn.Linear(D, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rel = self.norm(self.table.weight)[:4]
        return x @ self.proj(rel)


def test_table_normalized_whole_reads_every_row_once():
    torch.manual_seed(0)
    model = NormalizedTable()
    opt = DoPr(model, lr=1e-3)
    ap = opt.preconditioner
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            group = ap.groups[ap.layers["table"].group]
            assert group.rows == 6
            torch.testing.assert_close(group.total.double(), torch.ones(6, dtype=torch.float64), rtol=0, atol=0)
            opt.step()


class ConcatenatedHead(nn.Module):
    """MobileBERT's head: a weight built by torch.cat of two parameters, then multiplied."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(D, 4, bias=False)
        self.b = nn.Linear(D, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.cat([self.a.weight, self.b.weight]).T


def test_an_op_that_is_not_a_read_is_named():
    model = ConcatenatedHead()
    opt = DoPr(model, lr=1e-3)
    model(torch.randn(2, D)).sum().backward()
    with pytest.warns(RuntimeWarning, match=r"'a' has a gradient .* computed from it by torch\.cat"):
        opt.step()


class FunctionalConv(nn.Module):
    """A convolution's weight read by F.conv2d outside its module: with the module's geometry, and with another."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.conv.weight, self.conv.bias, self.stride, 1)


def test_a_convolution_read_outside_its_module_gets_its_patches():
    torch.manual_seed(0)
    model = FunctionalConv(stride=1)
    opt = DoPr(model, lr=1e-3)
    x = torch.randn(2, 2, 5, 5)
    model(x).square().sum().backward()
    z = F.unfold(x, 3, padding=1).transpose(1, 2)  # (C, kh, kw) columns, as a flattened kernel
    group = opt.preconditioner.groups[opt.preconditioner.layers["conv"].group]
    torch.testing.assert_close(_sum_of_rows(group), _gram(z), rtol=1e-5, atol=1e-5)


def test_a_convolution_read_with_another_geometry_is_named():
    model = FunctionalConv(stride=2)
    opt = DoPr(model, lr=1e-3)
    model(torch.randn(2, 2, 5, 5)).sum().backward()
    with pytest.warns(RuntimeWarning, match=r"'conv' has a gradient .* stride, padding, dilation or groups other than"):
        opt.step()
