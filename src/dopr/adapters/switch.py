"""In-place class switches to a drop-in subclass (attention, RNN stacks), shared by every preconditioner on a model.

DoPr switches a plain module (``nn.MultiheadAttention``, a multi-layer ``nn.LSTM``) to a subclass whose training
forward shows it the inner layers' inputs. Two preconditioners may rely on one switched module (on disjoint layers
of one model), so the switch is counted: each preconditioner that relies on it holds it once, and the last one to
let go switches it back. A module built as the subclass by its user is never switched back. A copy or pickle of
a module DoPr switched (an EMA ``deepcopy``, ``torch.save(model)``) is the plain class: the switch is DoPr's
bookkeeping, not part of the model (as for tapped weights, :class:`~dopr.tap.TappedParameter`).
"""

from __future__ import annotations

import copyreg
import weakref
from typing import Any

from torch import nn

# module -> how many preconditioners hold the switch DoPr made (absent: never switched by DoPr)
_HOLDERS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def hold(module: nn.Module, plain: type, captured: type) -> bool:
    """Switch ``module`` of class ``plain`` to ``captured`` (or hold it once more if DoPr switched it already);
    True if ``module`` is now ``captured``, False if it is neither class (a subclass of its own is left as is)."""
    if type(module) is captured:
        if module in _HOLDERS:
            _HOLDERS[module] += 1
        return True
    if type(module) is not plain:
        return False
    module.__class__ = captured
    _HOLDERS[module] = 1
    return True


def let_go(module: nn.Module, plain: type, captured: type) -> bool:
    """One holder fewer; the last switches ``module`` back to ``plain`` (True then)."""
    if type(module) is not captured or module not in _HOLDERS:
        return False
    _HOLDERS[module] -= 1
    if _HOLDERS[module] > 0:
        return False
    del _HOLDERS[module]
    module.__class__ = plain
    return True


def switched_by_dopr(module: nn.Module) -> bool:
    return module in _HOLDERS


class PlainWhenCopied:
    """Mixin of the drop-in subclasses: a module DoPr switched copies and pickles as its plain class."""

    _dopr_plain: type

    def __reduce_ex__(self, protocol: Any) -> Any:
        reduced = super().__reduce_ex__(protocol)
        if not switched_by_dopr(self) or not isinstance(reduced, tuple) or len(reduced) < 2:
            return reduced
        args = reduced[1]
        if reduced[0] is copyreg.__newobj__ and isinstance(args, tuple) and args == (type(self),):
            # pickle refuses __newobj__ of another class than the object's: the plain module, made as protocol 1 does
            return (copyreg._reconstructor, (self._dopr_plain, object, None), *reduced[2:])
        return reduced
