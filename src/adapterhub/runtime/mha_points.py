"""The forward hook of an ``nn.MultiheadAttention`` targeted by name (point ``("module", path)``): hands the call
to the adapters as ``AttentionModuleInputs`` (``methods.lora_mha``), whose Stack runs the attention again with the
adapters' weight updates, and returns that output in place of the module's.

Like the other module hooks it returns ``None`` at once when no adapter of the current setup uses module points.
The module's own output is computed first and replaced (``nn.MultiheadAttention`` offers no way to change its
weights for one call without writing to the shared module), so an adapted attention costs about two. Only an adapter
name or a Stack of adapter names can apply such an adapter; any other block holding one raises naming it."""

from __future__ import annotations

from typing import Any

from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import MODULE, MODULE_LAYER
from adapterhub.methods.lora_mha import AttentionModuleInputs, refused_block
from adapterhub.runtime.injection import AdapterHook, PointHandler
from adapterhub.spec.composition import Stack, setup_names


class AttentionPointHook(AdapterHook):
    """Forward hook (with kwargs) on an ``nn.MultiheadAttention`` targeted by name."""

    def __init__(self, handler: PointHandler, path: str) -> None:
        self.handler, self.path = handler, path

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        handler = self.handler
        if not handler.uses(MODULE):
            return None
        setup = getattr(handler, "current_setup", lambda: None)()
        if not _plain(setup) and self._present_in(setup):
            raise refused_block(f"{type(setup).__name__} (in {setup!r})")
        inputs = AttentionModuleInputs.of_call(module, args, kwargs, output)  # type: ignore[arg-type]
        return handler.point_forward(MODULE_LAYER, MODULE, self.path, inputs)

    def _present_in(self, setup: Any) -> bool:
        adapters = getattr(self.handler, "adapters", {})
        merged = getattr(self.handler, "merged", {})
        return any(
            name in adapters
            and name not in merged
            and adapters[name].present(MODULE_LAYER, MODULE, self.path)
            for name in setup_names(setup)
        )


def _plain(setup: Any) -> bool:
    """None, an adapter name, or a Stack of adapter names."""
    return (
        setup is None
        or isinstance(setup, str)
        or (isinstance(setup, Stack) and all(isinstance(c, str) for c in setup.children))
    )


def attach_attention_point(module: nn.Module, handler: PointHandler, path: str) -> None:
    """Hook the ``nn.MultiheadAttention`` at ``path``; raises for one whose q, k and v projections are separate
    (``kdim`` / ``vdim`` other than ``embed_dim``), which peft's LoRA does not adapt either."""
    assert isinstance(module, nn.MultiheadAttention)
    if not module._qkv_same_embed_dim:
        raise ConfigError(
            f"{path!r} is an nn.MultiheadAttention with kdim={module.kdim}, vdim={module.vdim} (separate q, k and v "
            f"weights, not one in_proj_weight); LoRA on it supports kdim = vdim = embed_dim ({module.embed_dim}), as "
            "peft does. Leave it out of target_modules."
        )
    module.register_forward_hook(AttentionPointHook(handler, path), with_kwargs=True)
