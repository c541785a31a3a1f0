"""Reads of a weight that are neither a module call nor a plain ``F.linear``: the tap follows them exactly.

* ``F.multi_head_attention_forward`` given separate q/k/v Linear weights and an out-projection weight (WavLM):
  the q/k/v weights are read by the function's own in-projections, the out-projection by its attention output;
* an embedding table normalized as a whole, ``F.layer_norm(table)`` (SEW-D's relative positions): the rows of
  ``I @ table``, each row read once;
* ``torch.cat`` of weights (a fused projection, MobileBERT's head), then multiplied: each weight reads its part
  of the input (tests/test_mobilebert_head.py has the head itself);
* any other op computing a tensor from a tapped weight (a scaled copy) is named in the warning of the layer it
  leaves without statistics.
"""

from __future__ import annotations

import copy
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


class ConcatenatedWeights(nn.Module):
    """Weights joined by torch.cat, then multiplied: by rows (a fused projection), its transpose, or by columns (each
    weight reads its own columns of the input)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = nn.Linear(D if how != "columns" else 3, 4, bias=False)
        self.b = nn.Linear(D if how != "columns" else D - 3, 4 if how == "columns" else 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "rows":
            return F.linear(x, torch.cat([self.a.weight, self.b.weight]))
        if self.how == "transposed":
            return x @ torch.cat([self.a.weight, self.b.weight]).T
        return F.linear(x, torch.cat([self.a.weight, self.b.weight], dim=1))


class ModuleCalls(ConcatenatedWeights):
    """The same maps as module calls: the twin the reads must agree with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "columns":
            return self.a(x[..., :3]) + self.b(x[..., 3:])
        return torch.cat([self.a(x), self.b(x)], dim=-1)


def _train(model: nn.Module, steps: int = 3) -> None:
    opt = DoPr(model, base="sgd", lr=0.1, damping=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for s in range(steps):
            x = torch.randn(20, D, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    assert all(s["missing_statistics"] == 0 for s in opt.stats().values())
    opt.preconditioner.remove()


@pytest.mark.parametrize("how", ["rows", "transposed", "columns"])
def test_a_concatenation_of_weights_is_read_as_each_weight(how):
    torch.manual_seed(0)
    model = ConcatenatedWeights(how).double()
    twin = copy.deepcopy(model)
    twin.__class__ = ModuleCalls
    _train(model)
    _train(twin)
    for name in ("a", "b"):
        torch.testing.assert_close(getattr(model, name).weight, getattr(twin, name).weight, rtol=1e-12, atol=1e-13)


class ScaledCopy(nn.Module):
    """A weight read only through a scaled copy of it: no read of the weight itself."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(D, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (2 * self.a.weight).T


def test_an_op_that_is_not_a_read_is_named():
    model = ScaledCopy()
    opt = DoPr(model, lr=1e-3)
    model(torch.randn(2, D)).sum().backward()
    with pytest.warns(RuntimeWarning, match=r"'a' has a gradient .* computed from it by Tensor\.mul"):
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


class CastRouter(nn.Module):
    """DeepSeek-V3's router: ``F.linear(h.type(torch.float32), W.type(torch.float32))`` of a bfloat16 weight."""

    num_experts = 4

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, D, dtype=torch.bfloat16))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h.type(torch.float32), self.weight.type(torch.float32))


def test_a_cast_weight_is_read_as_the_weight():
    model = nn.Sequential(CastRouter())
    opt = DoPr(model, lr=1e-3)
    x = torch.randn(5, D)
    model(x).square().sum().backward()
    ap = opt.preconditioner
    group = ap.groups[ap.layers["0"].group]
    assert group.rows == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opt.step()


def test_a_cast_to_the_weights_own_dtype_is_read_inside_a_compiled_graph():
    """DeepSeek-V3's float32 router under torch.compile: Dynamo hands the no-op cast back as the weight, whose
    F.linear then did not reach the tap (the router had no statistics); the cast's view does."""
    model = nn.Sequential(CastRouter())
    with torch.no_grad():
        model[0].weight.data = model[0].weight.data.float()
    opt = DoPr(model, lr=1e-3)
    forward = torch.compile(model, fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(2):
            opt.zero_grad()
            forward(torch.randn(5, D)).square().sum().backward()
            opt.step()
    torch.compiler.reset()
    assert opt.stats()["0"]["refreshes"] == 2
