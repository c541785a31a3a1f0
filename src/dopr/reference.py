"""A slow, obviously correct reference of the AP step, written independently of the fast path.

It records every layer call with its own hooks and builds each layer's input vectors explicitly in
float64: explicit patch extraction for convolutions (an index loop over output positions and kernel
offsets, for transposed convolutions too), explicit one-hot vectors for embeddings, an explicit
appended 1 for biases, the attention output recomputed from the formula for ``out_proj`` of
``nn.MultiheadAttention`` (no dropout), and the hidden states recomputed from the cell equations for
``weight_hh`` of RNN/LSTM/GRU. It inverts ``Sigma + lambda I`` with ``torch.linalg.inv`` and writes
``G @ inverse`` into ``.grad``. Each layer computes its own Sigma (no sharing), so it also checks
that sharing one Sigma between layers that read one input changes nothing.
A grouped convolution is ``groups`` layers: each group's Sigma is built from its input channels' columns of
the patches, its lambda from its own trace. With ``max_block`` it keeps only the diagonal blocks of Sigma (an
explicit mask over the ``ceil(d_in / max_block)`` contiguous blocks of width ``ceil(dim / blocks)``) and the full
Sigma's lambda.
Use it only on tiny models: it is quadratic in everything.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ReferenceAP"]

_F64 = torch.float64
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_RNNS = (nn.RNN, nn.LSTM, nn.GRU)


def _is_conv1d_hf(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def _conv_patches(module: nn.Module, x: Tensor, output_size: Any = None) -> list[Tensor]:
    """Receptive fields of a (transposed) convolution, in the (C_in, *kernel) order of its weight, by index loops
    (``output_size``: what a transposed one was called with)."""
    spatial = len(module.kernel_size)
    if x.ndim == spatial + 1:
        x = x.unsqueeze(0)
    k, s, d = module.kernel_size, module.stride, module.dilation
    transposed = isinstance(module, _CONV_TS)
    if module.padding == "same":
        p = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
    elif module.padding == "valid":
        p = (0,) * spatial
    else:
        p = tuple(module.padding)
    size_in = x.shape[2:]
    if transposed and output_size is not None:
        size_out = list(output_size)[-spatial:]
    elif transposed:
        size_out = [(n - 1) * si - 2 * pi + di * (ki - 1) + op + 1
                    for n, si, pi, di, ki, op in zip(size_in, s, p, d, k, module.output_padding)]
    else:
        size_out = [(n + 2 * pi - di * (ki - 1) - 1) // si + 1 for n, si, pi, di, ki in zip(size_in, s, p, d, k)]
    out = []
    for b in range(x.shape[0]):
        for o in itertools.product(*[range(n) for n in size_out]):
            z = torch.zeros(x.shape[1], *k, dtype=_F64)
            for kk in itertools.product(*[range(ki) for ki in k]):
                if transposed:  # output o gets x[i] * w[k] where o = i * s - p + k * d
                    num = [oj + pj - kj * dj for oj, pj, kj, dj in zip(o, p, kk, d)]
                    if any(v % sj for v, sj in zip(num, s)):
                        continue
                    i = [v // sj for v, sj in zip(num, s)]
                else:
                    i = [oj * sj - pj + kj * dj for oj, sj, pj, kj, dj in zip(o, s, p, kk, d)]
                if all(0 <= ij < n for ij, n in zip(i, size_in)):
                    z[(slice(None), *kk)] = x[(b, slice(None), *i)]
            out.append(z.reshape(-1))
    return out


def _attention_output(mha: nn.MultiheadAttention, q_in: Tensor, k_in: Tensor, v_in: Tensor) -> Tensor:
    """softmax(Q K^T / sqrt(d_head)) V, heads concatenated: the input of out_proj (no masks, no dropout)."""
    e, h = mha.embed_dim, mha.num_heads
    if mha.batch_first and q_in.ndim == 3:
        q_in, k_in, v_in = (t.transpose(0, 1) for t in (q_in, k_in, v_in))
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.detach().to(_F64).chunk(3)
    else:
        wq, wk, wv = (getattr(mha, f"{c}_proj_weight").detach().to(_F64) for c in "qkv")
    bias = mha.in_proj_bias.detach().to(_F64).chunk(3) if mha.in_proj_bias is not None else (0, 0, 0)
    q, k, v = q_in @ wq.T + bias[0], k_in @ wk.T + bias[1], v_in @ wv.T + bias[2]  # L x N x E

    def heads(t: Tensor) -> Tensor:  # L x N x E -> N x h x L x E/h
        return t.reshape(t.shape[0], -1, h, e // h).permute(1, 2, 0, 3)

    att = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(e // h), dim=-1) @ heads(v)
    return att.permute(2, 0, 1, 3).reshape(-1, e)


def _hidden_states(rnn: nn.Module, x: Tensor, hx: Any, direction: int) -> list[Tensor]:
    """h_{t-1} (h_{t+1} in reverse) for every step and sequence, from the cell equations."""
    if x.ndim == 2:
        x = x.unsqueeze(1)
    elif rnn.batch_first:
        x = x.transpose(0, 1)
    sfx = f"_l0{'_reverse' if direction else ''}"
    w_ih, w_hh = (getattr(rnn, f"weight_{p}{sfx}").detach().to(_F64) for p in ("ih", "hh"))
    b_ih, b_hh = ((getattr(rnn, f"bias_{p}{sfx}").detach().to(_F64) if rnn.bias else 0) for p in ("ih", "hh"))
    hidden = rnn.hidden_size
    h0 = hx[0] if isinstance(hx, tuple) else hx
    h = torch.zeros(x.shape[1], hidden, dtype=_F64) if h0 is None else h0[direction].reshape(-1, hidden).to(_F64)
    c = torch.zeros_like(h) if not isinstance(hx, tuple) else hx[1][direction].reshape(-1, hidden).to(_F64)
    previous = [None] * x.shape[0]
    for t in (range(x.shape[0]) if direction == 0 else reversed(range(x.shape[0]))):
        previous[t] = h
        gi, gh = x[t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        if isinstance(rnn, nn.LSTM):
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        elif isinstance(rnn, nn.GRU):
            (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, dim=1), gh.chunk(3, dim=1)
            r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
            h = (1 - z) * torch.tanh(ni + r * nh) + z * h
        else:
            h = torch.tanh(gi + gh) if rnn.nonlinearity == "tanh" else torch.relu(gi + gh)
    return [row for t in range(x.shape[0]) for row in previous[t]]


class ReferenceAP:
    """Reference activation-wise preconditioner for every layer type the fast path supports."""

    def __init__(self, model: nn.Module, damping: float, modules: list[str] | None = None,
                 max_block: int | None = None) -> None:
        self.damping = damping
        self.max_block = max_block
        kinds = (nn.Linear, nn.Embedding, nn.MultiheadAttention, *_CONVS, *_CONV_TS, *_RNNS)
        wanted = set(modules) if modules is not None else None
        self.modules = {n: m for n, m in model.named_modules()
                        if (isinstance(m, kinds) or _is_conv1d_hf(m)) and (wanted is None or n in wanted)}
        self.parents = {f"{n}.out_proj": n for n, m in self.modules.items() if isinstance(m, nn.MultiheadAttention)}
        self.calls: dict[str, list[tuple[tuple, dict]]] = {n: [] for n in self.modules}
        self._handles = [m.register_forward_pre_hook(self._recorder(n), with_kwargs=True)
                         for n, m in self.modules.items()]

    def _recorder(self, name: str) -> Callable[[nn.Module, tuple, dict], None]:
        def copy(v: Any) -> Any:
            if isinstance(v, Tensor):
                return v.detach().clone().to(_F64) if v.is_floating_point() else v.detach().clone()
            return tuple(copy(t) for t in v) if isinstance(v, tuple) else v

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if module.training and torch.is_grad_enabled():
                self.calls[name].append((copy(args), {k: copy(v) for k, v in kwargs.items()}))

        return hook

    def layers(self) -> list[tuple[str, str, nn.Module]]:
        """(layer name, module name, module), with ``module:part`` names for the layers inside one module."""
        out = []
        for n, m in self.modules.items():
            if isinstance(m, nn.MultiheadAttention):
                out += [(f"{n}:{p}", n, m) for p in "qkv"]
            elif isinstance(m, _RNNS):
                out += [(f"{n}:{p}_l0{s}", n, m) for s in ([""] + ["_reverse"] * m.bidirectional) for p in ("ih", "hh")]
            else:
                out.append((n, n, m))
        return out

    def _params(self, layer: str, module: nn.Module) -> tuple[Tensor, Tensor | None, slice]:
        """The weight viewed as d_out x d_in (a view of .grad's layout), its bias and the rows of both it owns."""
        part = layer.partition(":")[2]
        if isinstance(module, nn.MultiheadAttention):
            i = "qkv".index(part)
            e = module.embed_dim
            rows = slice(i * e, (i + 1) * e)  # of in_proj_weight and in_proj_bias, which stack q, k and v
            if module._qkv_same_embed_dim:
                return module.in_proj_weight, module.in_proj_bias, rows
            return getattr(module, f"{part}_proj_weight"), module.in_proj_bias, rows
        if isinstance(module, _RNNS):
            w = getattr(module, f"weight_{part}")
            return w, getattr(module, f"bias_{part}") if module.bias else None, slice(None)
        return module.weight, getattr(module, "bias", None), slice(None)

    def vectors(self, layer: str) -> list[Tensor]:
        """The input vectors z_i (bias-augmented) that this layer saw since the last precondition."""
        module_name, _, part = layer.partition(":")
        module = self.modules[module_name]
        rows: list[Tensor] = []
        if module_name in self.parents:  # out_proj of an attention module reads the attention output
            mha = self.modules[self.parents[module_name]]
            for a, kw in self.calls[self.parents[module_name]]:
                q, k, v = (a[i] if len(a) > i else kw[("query", "key", "value")[i]] for i in range(3))
                rows.extend(_attention_output(mha, q, k, v).unbind(0))
        for args, kwargs in ([] if module_name in self.parents else self.calls[module_name]):
            if isinstance(module, nn.Embedding):
                for token in args[0].reshape(-1).tolist():
                    onehot = torch.zeros(module.num_embeddings, dtype=_F64)
                    onehot[token] = 1.0
                    rows.append(onehot)
            elif isinstance(module, nn.MultiheadAttention):
                i = "qkv".index(part)
                x = args[i] if len(args) > i else kwargs[("query", "key", "value")[i]]
                rows.extend(x.reshape(-1, x.shape[-1]).unbind(0))
            elif isinstance(module, _RNNS):
                x = args[0]
                if part.startswith("ih"):
                    rows.extend(x.reshape(-1, x.shape[-1]).unbind(0))
                else:
                    hx = args[1] if len(args) > 1 else kwargs.get("hx")
                    rows.extend(_hidden_states(module, x, hx, int(part.endswith("reverse"))))
            elif isinstance(module, (*_CONVS, *_CONV_TS)):
                rows.extend(_conv_patches(module, args[0], args[1] if len(args) > 1 else kwargs.get("output_size")))
            else:
                x = args[0]
                rows.extend(x.reshape(-1, x.shape[-1]).unbind(0))
        _, bias, _ = self._params(layer, module)
        if bias is not None:
            rows = [torch.cat([r, torch.ones(1, dtype=_F64)]) for r in rows]
        return rows

    def sigma(self, layer: str) -> Tensor:
        rows = self.vectors(layer)
        s = torch.zeros(rows[0].numel(), rows[0].numel(), dtype=_F64)
        for r in rows:
            s += torch.outer(r, r)
        return s / len(rows)

    def gradient_matrix(self, layer: str) -> Tensor:
        module = self.modules[layer.partition(":")[0]]
        w, bias, rows = self._params(layer, module)
        if isinstance(module, nn.Embedding):
            return module.weight.grad.to(_F64).T
        g = w.grad.to(_F64)
        if _is_conv1d_hf(module):
            g = g.T
        elif isinstance(module, _CONV_TS):  # C_in x C_out/groups x k, input channels grouped -> C_out x C_in/groups x k
            c = module.groups
            g = g.view(c, g.shape[0] // c, *g.shape[1:]).transpose(1, 2).reshape(-1, g.shape[0] // c, *g.shape[2:])
        w_rows = rows if w is getattr(module, "in_proj_weight", None) else slice(None)
        g = g[w_rows].reshape(g[w_rows].shape[0], -1)
        if bias is not None:
            g = torch.cat([g, bias.grad.to(_F64)[rows].reshape(-1, 1)], dim=1)
        return g

    @torch.no_grad()
    def precondition_(self) -> None:
        updates = []
        for layer, module_name, module in self.layers():
            w, bias, rows = self._params(layer, module)
            feeds = self.calls[self.parents.get(module_name, module_name)]
            if not feeds or w.grad is None:
                continue
            if getattr(module, "groups", 1) > 1:  # a grouped convolution: each group is a layer of its own
                updates.append((layer, module, self._grouped_update(layer, module)))
                continue
            s = self.sigma(layer)
            d = s.shape[0]
            lam = self.damping * torch.trace(s) / d
            if self.max_block is not None and not isinstance(module, nn.Embedding):
                s = s * self._block_mask(d, d - int(bias is not None))
            inverse = torch.linalg.inv(s + lam * torch.eye(d, dtype=_F64))
            updates.append((layer, module, self.gradient_matrix(layer) @ inverse))
        for layer, module, m in updates:  # write after all reads: q, k and v share in_proj's .grad
            self._write(layer, module, m)
        for calls in self.calls.values():
            calls.clear()

    def _grouped_update(self, layer: str, module: nn.Module) -> Tensor:
        """Group g's output channels read only group g's input channels: its Sigma is built from those columns of
        the patches (and the 1 of its bias), its lambda from its own trace."""
        groups, g = module.groups, self.gradient_matrix(layer)
        rows = self.vectors(layer)
        width = module.in_channels // groups * math.prod(module.kernel_size)
        outputs = g.shape[0] // groups
        blocks = []
        for i in range(groups):
            z = torch.stack([r[i * width:(i + 1) * width] for r in rows])
            if module.bias is not None:
                z = torch.cat([z, torch.ones(len(z), 1, dtype=_F64)], dim=1)
            s = z.T @ z / len(z)
            lam = self.damping * torch.trace(s) / s.shape[0]
            inverse = torch.linalg.inv(s + lam * torch.eye(s.shape[0], dtype=_F64))
            blocks.append(g[i * outputs:(i + 1) * outputs] @ inverse)
        return torch.cat(blocks)

    def _write(self, layer: str, module: nn.Module, m: Tensor) -> None:
        w, bias, rows = self._params(layer, module)
        if isinstance(module, nn.Embedding):
            module.weight.grad.copy_(m.T)
            return
        k = m.shape[1] - int(bias is not None)
        g = w.grad
        if _is_conv1d_hf(module):
            g.copy_(m[:, :k].T)
        elif isinstance(module, _CONV_TS):
            c = module.groups
            view = g.view(c, g.shape[0] // c, *g.shape[1:]).transpose(1, 2)
            view.copy_(m[:, :k].reshape(view.shape))
        else:
            w_rows = rows if w is getattr(module, "in_proj_weight", None) else slice(None)
            g[w_rows].copy_(m[:, :k].reshape(g[w_rows].shape))
        if bias is not None:
            bias.grad[rows].copy_(m[:, k])

    def _block_mask(self, dim: int, in_features: int) -> Tensor:
        blocks = -(-in_features // self.max_block)
        width = -(-dim // blocks)
        which = torch.arange(dim) // width
        return (which[:, None] == which[None, :]).to(_F64)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
