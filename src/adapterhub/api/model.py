"""The facade: ``adapterhub.init(model)`` adds the adapter API to a loaded transformers model, and
``adapterhub.deinit(model)`` takes it away again.

``init`` attaches an ``AdapterStore`` (the adapters, heads and fusions as ordinary submodules, so optimisers,
``.to()``, DDP and state dicts see them) and forward hooks at the attachment points named by the model's
``ArchitectureSpec``. The model's class gets ``AdapterModelMixin`` as an extra base for the API methods only; no
forward is replaced. Layers below this module: the API mixins (``merging``, ``fusion_api``, ``adapters_api``,
``heads.api``) over the model core (``core``), the hooks (``injection``, ``parallel``, ``heads.routing``), the store
and interpreter, fusion, the methods, and the pure block data (``composition``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from adapterhub.api.arithmetic import ArithmeticMixin
from adapterhub.api.corda import CordaMixin
from adapterhub.api.eva import EvaMixin
from adapterhub.api.fusion import FusionMixin
from adapterhub.api.lora_ga import LoraGAMixin
from adapterhub.api.merging import MergeMixin
from adapterhub.api.prefix import PrefixTuningMixin
from adapterhub.errors import ConfigError
from adapterhub.heads.api import generation_class
from adapterhub.heads.routing import install_call_hooks, install_head_routing
from adapterhub.runtime import attention_hooks
from adapterhub.runtime.checkpointing import unwrap_checkpointing, wrap_checkpointing
from adapterhub.runtime.fusion import RegulariserHook
from adapterhub.runtime.injection import AdapterHook, SiteInjector, remove_hooks
from adapterhub.runtime.layers import get_layers
from adapterhub.runtime.parallel import ParallelGenerationMixin, install_parallel_hooks
from adapterhub.runtime.quantized import keep_autograd_layout
from adapterhub.runtime.specless import model_spec
from adapterhub.runtime.store import STORE_ATTR, AdapterStore

__all__ = ["STORE_ATTR", "AdapterModelMixin", "AdapterStore", "deinit", "init"]


class _Regulariser(RegulariserHook, AdapterHook):
    """The fusion regulariser as an adapterhub hook (found and removed by ``deinit``)."""


class AdapterModelMixin(
    MergeMixin, FusionMixin, PrefixTuningMixin, ArithmeticMixin, EvaMixin, CordaMixin, LoraGAMixin
):
    """Adapter API added to a transformers model by ``adapterhub.init``."""

    _adapterhub_original: type  # the class the model had before init

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickle (``torch.save(model)``) and copy as the original class plus the adapter API: the mixed class is
        made again on loading, so unpickling needs adapterhub importable but no registry of classes."""
        cls = type(self)
        generates = "GenerationMixin" in {
            base.__name__ for base in cls.__bases__
        }  # given by a causal-LM head
        return (_new_mixed, (cls._adapterhub_original, generates), self.__getstate__())

    def _set_gradient_checkpointing(self, *args: Any, **kwargs: Any) -> None:
        """transformers' switch (behind ``gradient_checkpointing_enable`` / ``activation_checkpointing_enable``),
        then each layer's checkpoint function wrapped so that its recompute during ``backward()`` runs under the
        adapter setup and per-call state of the forward it repeats (``adapterhub.runtime.checkpointing``)."""
        super()._set_gradient_checkpointing(*args, **kwargs)  # type: ignore[misc]
        wrap_checkpointing(self, getattr(self, STORE_ATTR))  # type: ignore[arg-type]


def _new_mixed(original: type, generates: bool = False) -> Any:
    cls = _with_mixin(original)
    return object.__new__(generation_class(cls) if generates else cls)


_MIXED_CLASSES: dict[type, type] = {}


def _with_mixin(cls: type) -> type:
    if issubclass(cls, AdapterModelMixin):
        return cls
    if cls not in _MIXED_CLASSES:
        generates = callable(getattr(cls, "generate", None))
        mixed = type(
            cls.__name__,
            (AdapterModelMixin, ParallelGenerationMixin, cls) if generates else (AdapterModelMixin, cls),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_adapterhub_original": cls},
        )
        _MIXED_CLASSES[cls] = mixed
    return _MIXED_CLASSES[cls]


def init(model: nn.Module) -> nn.Module:
    """Add the adapter API to ``model`` in place and return it. Calling it again does nothing. A model without an
    ArchitectureSpec (a custom ``nn.Module``, a transformers model of a type no spec describes) carries only
    adapters that target modules by name (LoRA, rsLoRA, DoRA with ``target_modules``); adding any other raises."""
    if isinstance(getattr(model, "_modules", {}).get(STORE_ATTR), AdapterStore):
        return model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"adapterhub.init expects a torch nn.Module, got {type(model).__name__}.")
    spec = model_spec(model)  # MODULES_ONLY without a spec: adapters by module name only (runtime.specless)
    get_layers(model, spec)  # fails early with a clear message if the spec does not fit
    keep_autograd_layout(model)  # bitsandbytes' CPU inference layout would cut gradients (runtime.quantized)
    store = AdapterStore()
    store.original_class = type(model)
    model.add_module(STORE_ATTR, store)
    model.__class__ = _with_mixin(type(model))
    SiteInjector(model, spec, store)
    attention_hooks.install(model, spec, store)
    install_head_routing(model, store)
    install_parallel_hooks(model, spec, store)
    model.register_forward_hook(_Regulariser(store))
    install_call_hooks(model, store)  # last: its pre-hook runs first and its forward hook last
    wrap_checkpointing(model, store)  # checkpointing enabled before init
    return model


def deinit(model: nn.Module) -> nn.Module:
    """Undo ``adapterhub.init``: remove every hook, the adapters, heads and fusions, and restore the model's class.
    The model then computes bit-identically to one never initialised. Merged adapters must be unmerged first
    (their update is in the weights). Returns the model; a model never initialised is returned as it is."""
    store = getattr(model, "_modules", {}).get(STORE_ATTR)
    if not isinstance(store, AdapterStore):
        return model
    if store.merged:
        raise ConfigError(
            f"Adapter(s) {list(store.merged)} are merged into the base weights; call model.unmerge_adapter() "
            "before adapterhub.deinit(model), or the weights keep their update."
        )
    remove_hooks(model)
    unwrap_checkpointing(model)
    attention_hooks.disable(model)
    del model._modules[STORE_ATTR]
    model.__class__ = store.original_class  # type: ignore[assignment]
    return model
