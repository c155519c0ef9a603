"""Activation (gradient) checkpointing under adapters: the recompute runs under the state of the forward it repeats.

transformers checkpoints each layer by calling ``layer._gradient_checkpointing_func(forward, *args)`` (a
``functools.partial`` of ``torch.utils.checkpoint.checkpoint``). Both variants run ``forward`` a second time while
``backward()`` runs: the reentrant one when the layer's gradient is needed, the non-reentrant one when a saved
tensor is unpacked. By then the ``with model.adapter_setup(...)`` block of the call may have exited, another setup
may be active, and the call's ``CallState`` (the Parallel batch size, ...) has ended; a recompute under the wrong
setup gives wrong gradients (reentrant) or a different graph (non-reentrant: ``CheckpointError``).

``StatefulCheckpoint`` wraps that function. When the layer first runs it records the setup in force
(``store.current_setup()``) and this thread's ``CallState``; ``forward`` then runs (first time and recompute alike)
with that setup as a per-call override and that state resumed (``callstate.resumed``), in whatever thread it runs.

Reentrant checkpointing returns no gradient to parameters inside the layer unless an input tensor requires grad;
with a frozen base nothing before the first layer does. When grad mode is on and no tensor argument requires grad,
the wrapper passes a detached copy of the first floating-point tensor argument with ``requires_grad=True``: the
value is the same and, the input being constant for every trainable parameter, so are all gradients (this is what
transformers' ``enable_input_require_grads`` achieves with a hook on the embeddings, here for any caller).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from adapterhub.runtime import callstate
from adapterhub.runtime.store import AdapterStore

FUNC_ATTR = "_gradient_checkpointing_func"  # where transformers keeps a module's checkpoint function


class StatefulCheckpoint:
    """``inner(function, *args, **kwargs)`` with ``function`` run under the setup and ``CallState`` in force when
    the checkpointed layer first ran. Holds the store only (no reference to the model)."""

    def __init__(self, store: AdapterStore, inner: Callable[..., Any]) -> None:
        self.store, self.inner = store, inner

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        store = self.store
        setup, skip = store.current_setup(), store.current_skip()
        state = callstate.current(store)

        def run(*run_args: Any, **run_kwargs: Any) -> Any:
            with store.override(setup, skip), callstate.resumed(store, state):
                return function(*run_args, **run_kwargs)

        if torch.is_grad_enabled() and not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            args = _first_float_requires_grad(args)
        return self.inner(run, *args, **kwargs)


def _first_float_requires_grad(args: tuple[Any, ...]) -> tuple[Any, ...]:
    for i, value in enumerate(args):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return (*args[:i], value.detach().requires_grad_(True), *args[i + 1 :])
    return args


def wrap_checkpointing(model: nn.Module, store: AdapterStore) -> int:
    """Wrap every checkpoint function set on ``model``'s modules (not yet wrapped); returns how many were."""
    wrapped = 0
    for module in model.modules():
        func = module.__dict__.get(FUNC_ATTR)
        if func is not None and not isinstance(func, StatefulCheckpoint):
            setattr(module, FUNC_ATTR, StatefulCheckpoint(store, func))
            wrapped += 1
    return wrapped


def unwrap_checkpointing(model: nn.Module) -> None:
    """Put back the checkpoint functions ``wrap_checkpointing`` wrapped (``adapterhub.deinit``)."""
    for module in model.modules():
        func = module.__dict__.get(FUNC_ATTR)
        if isinstance(func, StatefulCheckpoint):
            setattr(module, FUNC_ATTR, func.inner)
