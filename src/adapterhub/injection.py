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


class _ResidualHook:
    """Forward pre-hook: remember the residual stream entering the sub-layer."""

    def __init__(self, injector: SiteInjector, key: tuple[int, str, str], ref: InputRef) -> None:
        self.injector, self.key, self.ref = injector, key, ref

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.injector.handler.is_active():
            residual = _read_input(self.ref, args, kwargs)
            if residual is not None:
                self.injector.captured()[self.key] = residual


class _OutputHook:
    """Forward hook on the sub-layer output: record ``h`` (post-norm) or replace it (pre-norm)."""

    def __init__(self, injector: SiteInjector, index: int, site_name: str, site: SiteSpec) -> None:
        self.injector, self.index, self.site_name, self.site = injector, index, site_name, site

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        injector, site = self.injector, self.site
        if not injector.handler.is_active():
            return None
        h = output[site.output_index] if site.output_index is not None else output
        store = injector.captured()
        if site.norm is not None:
            store[(self.index, self.site_name, "h")] = h
            return None
        residual = store.pop((self.index, self.site_name, "residual"), None)
        if residual is None:
            return None
        replaced = injector.handler.site_forward(
            self.index, self.site_name, SiteInputs(h=h, residual=residual, norm=None)
        )
        if replaced is None or site.output_index is None:
            return replaced
        return (*output[: site.output_index], replaced, *output[site.output_index + 1 :])


class _NormHook:
    """Forward hook on the post-sub-layer LayerNorm (post-norm models): replace its output."""

    def __init__(self, injector: SiteInjector, index: int, site_name: str, norm: nn.Module) -> None:
        self.injector, self.index, self.site_name, self.norm = injector, index, site_name, norm

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm.forward(x)  # .forward bypasses this hook

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        injector = self.injector
        if not injector.handler.is_active():
            return None
        store = injector.captured()
        h = store.pop((self.index, self.site_name, "h"), None)
        residual = store.pop((self.index, self.site_name, "residual"), None)
        if h is None or residual is None:
            return None
        # ``output`` is this LayerNorm applied to h + residual: the model's own value, handed on so that adapters
        # placed after the original LayerNorm need not compute it again.
        return injector.handler.site_forward(
            self.index, self.site_name, SiteInputs(h=h, residual=residual, norm=self._norm, normed=output)
        )


class SiteInjector:
    """Owns the hooks of one model; ``remove()`` detaches them all.

    Hooks are small objects rather than closures so that ``copy.deepcopy(model)`` gives a copy whose hooks point
    at the copy's own adapters."""

    def __init__(self, model: nn.Module, spec: ArchitectureSpec, handler: SiteHandler) -> None:
        self.spec = spec
        self.handler = handler
        self._local = threading.local()
        self._handles: list[RemovableHandle] = []
        for index, layer in enumerate(get_layers(model, spec)):
            for site_name, site in spec.sites.items():
                self._attach(layer, index, site_name, site)

    def captured(self) -> dict[tuple[int, str, str], torch.Tensor]:
        """This thread's tensors recorded between the hooks of one site."""
        values = getattr(self._local, "values", None)
        if values is None:
            values = self._local.values = {}
        return values

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _attach(self, layer: nn.Module, index: int, site_name: str, site: SiteSpec) -> None:
        residual_hook = _ResidualHook(self, (index, site_name, "residual"), site.residual)
        self._handles.append(
            layer.get_submodule(site.residual.module).register_forward_pre_hook(
                residual_hook, with_kwargs=True
            )
        )
        self._handles.append(
            layer.get_submodule(site.output).register_forward_hook(_OutputHook(self, index, site_name, site))
        )
        if site.norm is not None:
            norm = layer.get_submodule(site.norm)
            self._handles.append(norm.register_forward_hook(_NormHook(self, index, site_name, norm)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
