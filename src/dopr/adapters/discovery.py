"""Which layers of a model DoPr preconditions, and why every other weight matrix is left out."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

from ..tap import tappable
from .attention import CapturedMultiheadAttention, InProjAdapter, capture_attention
from .base import Adapter, LinearAdapter, TransposedLinearAdapter, is_hf_conv1d
from .conv import ConvAdapter, ConvTransposeAdapter, conv_unsupported_reason, is_conv, is_conv_transpose
from .embedding import EmbeddingAdapter, embedding_unsupported_reason
from .experts import raw_weight_layers
from .recurrent import RECURRENT, RecurrentAdapter, capture_recurrent, recurrent_unsupported_reason

__all__ = ["EXCLUDED", "Discovery", "LayerSpec", "discover", "is_weight_matrix", "layer_adapters"]

EXCLUDED = "excluded by name pattern"

_LINEAR, _T_LINEAR, _CONV, _CONV_T, _EMBEDDING = (LinearAdapter(), TransposedLinearAdapter(), ConvAdapter(),
                                                   ConvTransposeAdapter(), EmbeddingAdapter())
_IN_PROJ = [(f":{p}", InProjAdapter(p)) for p in ("q", "k", "v")]


@dataclass(frozen=True)
class LayerSpec:
    """One layer in the paper's sense: a weight (and bias) reading one input. ``name`` is the module's name,
    or ``module:part`` for the layers inside one module (``attn:q``, ``lstm:hh_l0``)."""

    name: str
    module_name: str
    module: nn.Module
    adapter: Adapter
    tapped: bool = False  # captured where its weight is read (dopr.tap), not by a hook on its module


@dataclass
class Discovery:
    layers: dict[str, LayerSpec] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # layer or module name -> why it gets no AP
    uncovered: dict[str, str] = field(default_factory=dict)  # weight-matrix parameter -> why it gets no AP
    # modules switched to DoPr's drop-ins: nn.MultiheadAttention (out_proj's input), multi-layer RNNs (layer by layer)
    attention: list[nn.Module] = field(default_factory=list)
    attention_names: list[str] = field(default_factory=list)
    # weights read by several layers that DoPr can separate: (embedding layers, the Linear output head or None)
    tied: list[tuple[list[str], str | None]] = field(default_factory=list)

    def unexpected(self) -> dict[str, str]:
        """The uncovered weight matrices the user did not ask to leave out (named in the construction warning)."""
        return {n: why for n, why in self.uncovered.items() if why != EXCLUDED}


def is_weight_matrix(p: nn.Parameter) -> bool:
    """A parameter with at least two dims of size > 1 (a matrix or kernel, not a bias, scale or token)."""
    return sum(s > 1 for s in p.shape) >= 2


def layer_adapters(module: nn.Module) -> list[tuple[str, Adapter]] | str | None:
    """The layers inside ``module`` (name suffix, adapter), why a known layer type is not supported, or None for
    a module type DoPr has no adapter for (its own weight matrices are then named as uncovered)."""
    if isinstance(module, nn.Linear):
        return [("", _LINEAR)]
    if is_hf_conv1d(module):
        return [("", _T_LINEAR)]
    if is_conv(module) or is_conv_transpose(module):
        reason = conv_unsupported_reason(module)
        return reason or [("", _CONV if is_conv(module) else _CONV_T)]
    if isinstance(module, nn.Embedding):
        return embedding_unsupported_reason(module) or [("", _EMBEDDING)]
    if isinstance(module, nn.MultiheadAttention):
        return _IN_PROJ
    if isinstance(module, RECURRENT):
        reason = recurrent_unsupported_reason(module)
        return reason or [(f":{part}_l{layer}{'_reverse' if d else ''}", RecurrentAdapter(part, d, layer))
                          for layer in range(module.num_layers) for d in range(2 if module.bidirectional else 1)
                          for part in ("ih", "hh")]
    if isinstance(module, nn.Bilinear):
        return "nn.Bilinear reads two inputs through one 3-D weight, which AP has no rule for"
    return None


def own_forward(module: nn.Module) -> type | None:
    """The torch layer class whose math ``module`` is, when ``module`` is a subclass with a forward of its own
    (timm's weight-standardized ``StdConv2d``, a position embedding that builds its positions); None otherwise."""
    for base in (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d):
        if isinstance(module, base):
            return base if type(module).forward is not base.forward else None
    return None


def derived_weight_reason(module: nn.Module) -> str | None:
    """Why a known layer's weight is not a parameter it owns (a parametrization, or the old weight_norm hook).

    AP's rule ``G (Sigma + lambda I)^-1`` is for the weight the layer reads. Here the trained parameter is another
    tensor (``original``, or ``weight_g``/``weight_v``) that the weight is computed from, and its gradient is not of
    that form, so it goes to the base optimizer unchanged. The weight is never read here: reading a spectral-norm
    weight in training mode runs a power iteration and changes the module's buffers.
    """
    if parametrize.is_parametrized(module):
        kinds = sorted({type(f).__name__ for plist in module.parametrizations.values() for f in plist})
        names = ", ".join(sorted(module.parametrizations.keys()))
        return (f"parametrized {names} ({', '.join(kinds)}): the trained tensor is the parametrization's original, "
                "not the weight the layer reads, so AP's rule does not apply to its gradient")
    if any(isinstance(hook, WeightNorm) for hook in module._forward_pre_hooks.values()):
        return ("weight computed in a forward pre-hook from other parameters (torch.nn.utils.weight_norm's weight_g "
                "and weight_v): AP's rule is for the weight the layer reads, not for those parameters")
    return None


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def discover(model: nn.Module, exclude: tuple[str, ...], capture: bool = True) -> Discovery:
    """The layers of ``model`` DoPr preconditions, and why each other candidate is not.

    Left to the base optimizer: frozen or partly frozen layers, names matching an ``exclude`` fnmatch
    pattern, unsupported configurations, and layers that share a parameter with another (tied weights).
    With ``capture``, plain ``nn.MultiheadAttention`` modules whose ``out_proj`` gets AP are switched to
    :class:`~dopr.adapters.attention.CapturedMultiheadAttention` (see there).
    """
    found = Discovery()
    modules = dict(model.named_modules())
    candidates: list[LayerSpec] = []
    owners: dict[tuple[int, tuple[int, int] | None], list[str]] = {}
    for name, module in modules.items():
        parts = layer_adapters(module)
        if parts is None:
            parts = raw_weight_layers(module)
        if not parts:
            continue
        if isinstance(parts, str):
            found.skipped[name] = f"unsupported: {parts}"
            continue
        if (derived := derived_weight_reason(module)) is not None:
            found.skipped[name] = derived
            continue
        # a stack runs layer by layer to show its inner inputs: switched only if one of its layers gets AP
        if isinstance(module, RECURRENT) and module.num_layers > 1 and any(
                _plain_reason(name, f"{name}{suffix}", adapter.params(module), exclude) is None
                for suffix, adapter in parts):
            if not (capture and capture_recurrent(module)):
                found.skipped[name] = "a multi-layer RNN DoPr may not switch to its layer-by-layer forward"
                continue
            if not any(m is module for m in found.attention):
                found.attention.append(module)
        for suffix, adapter in parts:
            layer = f"{name}{suffix}"
            params = adapter.params(module)
            why = _plain_reason(name, layer, params, exclude)
            if why is None and _inside_fused_attention(name, modules) and not (
                    capture and _capture(name, modules, found)):
                why = ("called inside its nn.MultiheadAttention's fused forward, not as a module, so its input is "
                       "not observable (the attention module is a subclass with its own forward)")
            if why is not None:
                found.skipped[layer] = why
                continue
            candidates.append(LayerSpec(layer, name, module, adapter))
            for p in params:
                owners.setdefault((id(p), adapter.rows_of(module, p)), []).append(layer)
    by_name = {spec.name: spec for spec in candidates}
    shared: set[str] = set()
    for names in owners.values():
        if len(names) > 1:
            tied = _tied_set(names, by_name)
            if tied is None:
                shared.update(names)
            else:
                found.tied.append(tied)
    for tied in list(found.tied):  # tied, and sharing something else too (a bias): not supported
        members = set(tied[0]) | ({tied[1]} if tied[1] else set())
        if members & shared:
            shared.update(members)
            found.tied.remove(tied)
    tied_layers = {n for embeddings, head in found.tied for n in (*embeddings, head) if n}
    # a tied head is tapped (MobileBERT reads it only as decoder.weight.t()); its embeddings keep their module hooks,
    # which also keep the output gradients that separate the two layers' shares of the weight's gradient (dopr.tied)
    tied_embeddings = tied_layers - {head for _, head in found.tied}
    for spec in candidates:
        if spec.name in shared:
            found.skipped[spec.name] = ("parameter shared with another layer in a way DoPr does not support (it "
                                        "supports one Embedding tied to one Linear output head)")
            continue
        tapped = spec.name not in tied_embeddings and _tappable(spec, modules)
        why = None if tapped or spec.name in tied_layers else _hook_reason(spec)
        if why is not None:
            found.skipped[spec.name] = why
        else:
            found.layers[spec.name] = replace(spec, tapped=tapped)
    found.uncovered = _uncovered(model, modules, found)
    return found


def _tappable(spec: LayerSpec, modules: dict[str, nn.Module]) -> bool:
    """Whether the layer is captured where its weight is read: an op DoPr can see reads it, DoPr owns the weight's
    class, and no fused function hides the read (out_proj inside nn.MultiheadAttention keeps its module hook)."""
    if spec.adapter.reads == "conv" and own_forward(spec.module) is not None:
        return False  # a convolution's rows are the patches of its module's geometry, which its own forward may not use
    if spec.adapter.reads == "packed" and type(spec.module) is not CapturedMultiheadAttention:
        return False  # only DoPr's attention forward reports its projections' reads
    return (spec.adapter.reads is not None and tappable(spec.adapter.weight(spec.module))
            and not (_inside_fused_attention(spec.module_name, modules)
                     and type(modules[spec.module_name.rpartition(".")[0]]) is not CapturedMultiheadAttention))


def _hook_reason(spec: LayerSpec) -> str | None:
    """Why a layer that cannot be tapped cannot be read by a hook on its module either (None: it can)."""
    weight = spec.adapter.weight(spec.module)
    if not spec.adapter.module_call:
        return (f"read inside its module's forward (by F.linear), not by a module call; DoPr sees such reads only on "
                f"a plain nn.Parameter, and this weight is a {type(weight).__name__}")
    if (base := own_forward(spec.module)) is not None:
        how = ("DoPr follows a convolution's reads only through its base class's forward"
               if spec.adapter.reads in (None, "conv")
               else f"DoPr cannot tap its weight (a {type(weight).__name__})")
        return (f"a {base.__name__} subclass with a forward of its own ({type(spec.module).__name__}), which may not "
                f"be {base.__name__}'s math on the call's input (weight standardization, padding), and {how}")
    return None


def _tied_set(names: list[str], specs: dict[str, LayerSpec]) -> tuple[list[str], str | None] | None:
    """(embeddings, head) when the layers sharing a weight are Embeddings and at most one Linear output head reading
    it as ``vocab x d`` (tied input/output embeddings, T5's shared encoder/decoder embedding); None otherwise."""
    embeddings = [n for n in names if isinstance(specs[n].adapter, EmbeddingAdapter)]
    heads = [n for n in names if type(specs[n].adapter) is LinearAdapter]
    if not embeddings or len(heads) > 1 or len(embeddings) + len(heads) != len(names):
        return None
    weight = specs[embeddings[0]].module.weight
    if any(specs[n].module.weight is not weight for n in names):
        return None
    return embeddings, heads[0] if heads else None


def _plain_reason(name: str, layer: str, params: list[nn.Parameter], exclude: tuple[str, ...]) -> str | None:
    """Why layer ``layer`` of module ``name`` is left out whatever it is (frozen, excluded), or None."""
    if not any(p.requires_grad for p in params):
        return "frozen (no parameter requires grad)"
    if _matches(name, exclude) or _matches(layer, exclude):
        return EXCLUDED
    if not all(p.requires_grad for p in params):
        return "partly frozen (weight or bias does not require grad)"
    return None


def _inside_fused_attention(name: str, modules: dict[str, nn.Module]) -> bool:
    parent, _, attr = name.rpartition(".")
    return attr == "out_proj" and isinstance(modules.get(parent), nn.MultiheadAttention)


def _capture(name: str, modules: dict[str, nn.Module], found: Discovery) -> bool:
    parent = name.rpartition(".")[0]
    attention = modules[parent]
    if any(m is attention for m in found.attention):
        return True
    if capture_attention(attention):
        found.attention.append(attention)
        found.attention_names.append(parent)
        return True
    return False


def _uncovered(model: nn.Module, modules: dict[str, nn.Module], found: Discovery) -> dict[str, str]:
    covered: dict[int, int] = {}  # id(param) -> rows covered
    for spec in found.layers.values():
        for p in spec.adapter.params(spec.module):
            span = spec.adapter.rows_of(spec.module, p)
            covered[id(p)] = covered.get(id(p), 0) + (p.shape[0] if span is None else span[1] - span[0])
    reasons: dict[str, str] = {}
    for pname, p in model.named_parameters():
        if not p.requires_grad or not is_weight_matrix(p) or covered.get(id(p), 0) >= p.shape[0]:
            continue
        owner, _, attr = pname.rpartition(".")
        module = modules[owner]
        why = found.skipped.get(owner)
        if why is None and ".parametrizations." in f".{owner}.":  # a parametrization's original: its layer's reason
            why = found.skipped.get(f".{owner}".split(".parametrizations.")[0][1:])
        if why is None:  # a layer of a multi-layer module (attn:q, lstm:ih_l0) that was skipped
            why = next((w for layer, w in found.skipped.items() if layer.startswith(f"{owner}:")), None)
        if why is None:
            why = (f"no DoPr adapter for {type(module).__name__} ('{attr}' is not the weight of a layer type DoPr "
                   "knows: Linear, Conv1D, Conv/ConvTranspose 1-3d, Embedding, MultiheadAttention, RNN/LSTM/GRU)")
        reasons[pname] = why
    return reasons
