"""Attach adapter sites to a loaded transformers model with forward hooks, by module path.

For every layer ``i`` and site ``s`` of the model's ``ArchitectureSpec``:

- a forward pre-hook on ``residual.module`` records the residual stream ``input``;
- a forward hook on ``output`` records ``h`` (post-norm models) or replaces it (pre-norm models);
- post-norm models: a forward hook on ``norm`` replaces the LayerNorm's output.

The replacement value comes from a ``SiteHandler`` (the adapter runtime). When it returns ``None`` (no adapter
active at that site) the hooks return ``None`` too, so the model computes exactly what it computed before: the
outputs are bit-identical. Captured tensors are kept per thread, so concurrent forward passes do not mix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from adapterhub.architectures import ArchitectureSpec, InputRef, SiteSpec, get_layers
from adapterhub.methods.base import SiteInputs


class SiteHandler(Protocol):
    def is_active(self) -> bool: ...

    def site_forward(self, layer: int, site: str, inputs: SiteInputs) -> torch.Tensor | None: ...


def _read_input(ref: InputRef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if len(args) > ref.index:
        return args[ref.index]
    return kwargs.get(ref.name)


class SiteInjector:
    """Owns the hooks of one model; ``remove()`` detaches them all."""

    def __init__(self, model: nn.Module, spec: ArchitectureSpec, handler: SiteHandler) -> None:
        self.spec = spec
        self.handler = handler
        self._captured = threading.local()
        self._handles: list[RemovableHandle] = []
        for index, layer in enumerate(get_layers(model, spec)):
            for site_name, site in spec.sites.items():
                self._attach(layer, index, site_name, site)

    def _store(self) -> dict[tuple[int, str, str], torch.Tensor]:
        store = getattr(self._captured, "values", None)
        if store is None:
            store = self._captured.values = {}
        return store

    def _attach(self, layer: nn.Module, index: int, site_name: str, site: SiteSpec) -> None:
        key_h, key_residual = (index, site_name, "h"), (index, site_name, "residual")
        handler, pre_norm = self.handler, site.norm is None

        def record_residual(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if handler.is_active():
                self._store()[key_residual] = _read_input(site.residual, args, kwargs)
            return None

        def on_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if not handler.is_active():
                return None
            h = output[site.output_index] if site.output_index is not None else output
            if not pre_norm:
                self._store()[key_h] = h
                return None
            residual = self._store().pop(key_residual, None)
            if residual is None:
                return None
            replaced = handler.site_forward(index, site_name, SiteInputs(h=h, residual=residual, norm=None))
            if replaced is None:
                return None
            if site.output_index is None:
                return replaced
            return (*output[: site.output_index], replaced, *output[site.output_index + 1 :])

        self._handles.append(
            layer.get_submodule(site.residual.module).register_forward_pre_hook(record_residual, with_kwargs=True)
        )
        self._handles.append(layer.get_submodule(site.output).register_forward_hook(on_output))
        if site.norm is None:
            return
        norm_module = layer.get_submodule(site.norm)
        norm_forward: Callable[[torch.Tensor], torch.Tensor] = norm_module.forward  # bypasses this hook

        def on_norm(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not handler.is_active():
                return None
            store = self._store()
            h, residual = store.pop(key_h, None), store.pop(key_residual, None)
            if h is None or residual is None:
                return None
            return handler.site_forward(index, site_name, SiteInputs(h=h, residual=residual, norm=norm_forward))

        self._handles.append(norm_module.register_forward_hook(on_norm))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
