"""Attach adapter points to a loaded transformers model with forward hooks, by module path.

For every layer ``i`` of the model's ``ArchitectureSpec`` (encoder-decoder models: encoder layers, then decoder
layers, each with its stack's sites and projections):

- residual points (``spec.sites``): a forward pre-hook on ``residual.module`` records the residual stream input; a
  forward hook on ``output`` records ``h`` (post-norm models) or replaces it (pre-norm models); post-norm models: a
  forward hook on ``norm`` replaces the LayerNorm's output;
- linear points (``spec.linears``): a forward hook on each projection module replaces its output (or the slices
  of it that are the points of a fused projection) by what the adapters make of ``(x, y)``.

The replacement values come from a ``PointHandler`` (the adapter store). When it has nothing active for a kind of
point, the hooks return ``None`` at once, so the model computes exactly what it computed before: the outputs are
bit-identical. Tensors captured between two hooks of one residual point are kept per thread, so concurrent
forward passes do not mix. Hooks hold the handler, never the model or a module they are registered on (no
reference cycles: a model is freed as soon as its last reference goes).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import torch
from torch import nn

from adapterhub.errors import UnsupportedArchitectureError
from adapterhub.methods.base import (
    EMBEDDING,
    EMBEDDING_LAYER,
    LINEAR,
    RESIDUAL,
    EmbeddingInputs,
    LinearInputs,
    PointInputs,
    ResidualInputs,
)
from adapterhub.runtime.layers import get_base_model, layer_stacks
from adapterhub.runtime.quantized import float_weight, is_quantized, weight_reader
from adapterhub.spec.architectures import ArchitectureSpec, InputRef, LinearSpec, SiteSpec


class PointHandler(Protocol):
    def uses(self, kind: str) -> bool: ...

    def point_forward(
        self, layer: int, kind: str, point: str, inputs: PointInputs
    ) -> torch.Tensor | None: ...


class AdapterHook:
    """Base of every hook adapterhub registers (``remove_hooks`` finds them by it)."""


def remove_hooks(model: nn.Module) -> int:
    """Detach every adapterhub hook from ``model`` and its submodules; returns how many were removed."""
    removed = 0
    for module in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks"):
            hooks = getattr(module, attr)
            for key in [k for k, hook in hooks.items() if isinstance(hook, AdapterHook)]:
                del hooks[key]
                for extra in (
                    "_forward_hooks_with_kwargs",
                    "_forward_pre_hooks_with_kwargs",
                    "_forward_hooks_always_called",
                ):
                    getattr(module, extra, {}).pop(key, None)
                removed += 1
    return removed


def _read_input(ref: InputRef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if len(args) > ref.index:
        return args[ref.index]
    return kwargs.get(ref.name)


class _ResidualHook(AdapterHook):
    """Forward pre-hook: remember the residual stream entering the sub-layer."""

    def __init__(self, injector: SiteInjector, key: tuple[int, str, str], ref: InputRef) -> None:
        self.injector, self.key, self.ref = injector, key, ref

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.injector.handler.uses(RESIDUAL):
            residual = _read_input(self.ref, args, kwargs)
            if residual is None:
                raise UnsupportedArchitectureError(
                    f"The adapter site {self.key[1]!r} of layer {self.key[0]} reads the residual stream from input "
                    f"{self.ref.index} or keyword {self.ref.name!r} of {type(module).__name__}, but that call passed "
                    f"neither (keywords: {sorted(kwargs)}). This transformers version calls the module differently: "
                    "adjust the InputRef of the ArchitectureSpec (docs/ARCHITECTURES.md)."
                )
            self.injector.captured()[self.key] = residual


def _missing_capture(layer: int, site: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"The adapter site {site!r} of layer {layer} ran without the residual stream having been recorded: the "
        "modules the ArchitectureSpec names do not run in the order it expects in this transformers version. "
        "Adjust the spec (docs/ARCHITECTURES.md)."
    )


class _OutputHook(AdapterHook):
    """Forward hook on the sub-layer output: record ``h`` (post-norm) or replace it (pre-norm)."""

    def __init__(self, injector: SiteInjector, index: int, site_name: str, site: SiteSpec) -> None:
        self.injector, self.index, self.site_name, self.site = injector, index, site_name, site

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        injector, site = self.injector, self.site
        if not injector.handler.uses(RESIDUAL):
            return None
        h = output[site.output_index] if site.output_index is not None else output
        store = injector.captured()
        if site.norm is not None:
            store[(self.index, self.site_name, "h")] = h
            return None
        residual = store.pop((self.index, self.site_name, "residual"), None)
        if residual is None:
            raise _missing_capture(self.index, self.site_name)
        replaced = injector.handler.point_forward(
            self.index, RESIDUAL, self.site_name, ResidualInputs(h=h, residual=residual, norm=None)
        )
        if replaced is None or site.output_index is None:
            return replaced
        return (*output[: site.output_index], replaced, *output[site.output_index + 1 :])


class _NormHook(AdapterHook):
    """Forward hook on the post-sub-layer LayerNorm (post-norm models): replace its output."""

    def __init__(self, injector: SiteInjector, index: int, site_name: str) -> None:
        self.injector, self.index, self.site_name = injector, index, site_name

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        injector = self.injector
        if not injector.handler.uses(RESIDUAL):
            return None
        store = injector.captured()
        h = store.pop((self.index, self.site_name, "h"), None)
        residual = store.pop((self.index, self.site_name, "residual"), None)
        if h is None or residual is None:
            raise _missing_capture(self.index, self.site_name)
        # ``output`` is this LayerNorm applied to h + residual: the model's own value, handed on so that adapters
        # placed after the original LayerNorm need not compute it again. ``module.forward`` bypasses this hook.
        return injector.handler.point_forward(
            self.index, RESIDUAL, self.site_name, ResidualInputs(h, residual, module.forward, normed=output)
        )


def _point_view(
    weight: torch.Tensor, bias: torch.Tensor | None, linear: LinearSpec
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The point's ``(weight (d_out, d_in), bias)`` from its module's: the slice of a fused projection, ``Conv1D``
    weights transposed."""
    if linear.part is not None:
        index, parts = linear.part
        axis = 1 if linear.transposed else 0
        width = weight.shape[axis] // parts
        weight = weight.narrow(axis, index * width, width)
        bias = bias.narrow(0, index * width, width) if bias is not None else None
    return (weight.t() if linear.transposed else weight), bias


def linear_params(module: nn.Module, linear: LinearSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Views of a projection's ``(weight (d_out, d_in), bias (d_out,) or None)`` for one point: its slice of a fused
    projection, ``Conv1D`` weights transposed. In-place changes of the views change the module's parameters; a
    bitsandbytes-quantised module gives a dequantised copy instead (``runtime.quantized``: read only)."""
    return _point_view(float_weight(module), getattr(module, "bias", None), linear)


def hook_params(module: nn.Module, linear: LinearSpec) -> tuple[Any, torch.Tensor | None]:
    """``linear_params`` as a hook hands them to ``LinearInputs``: for a quantised module the weight is a function
    that dequantises it when a method asks (``LinearInputs.require_weight``)."""
    bias: torch.Tensor | None = getattr(module, "bias", None)
    if not is_quantized(module):
        return _point_view(module.weight, bias, linear)  # type: ignore[arg-type]
    if linear.part is not None and bias is not None:
        index, parts = linear.part
        width = bias.shape[0] // parts
        bias = bias.narrow(0, index * width, width)
    read = weight_reader(module)
    return (lambda: _point_view(read(), None, linear)[0]), bias  # type: ignore[operator]


class _LinearHook(AdapterHook):
    """Forward hook on a projection module: the adapters' value for each point it holds (slices of a fused one)."""

    def __init__(self, injector: SiteInjector, index: int, points: list[tuple[str, LinearSpec]]) -> None:
        self.injector, self.index, self.points = injector, index, points

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        handler = self.injector.handler
        if not handler.uses(LINEAR):
            return None
        x = args[0]  # (batch, seq, d_in)
        if len(self.points) == 1 and self.points[0][1].part is None:
            weight, bias = hook_params(module, self.points[0][1])
            return handler.point_forward(
                self.index, LINEAR, self.points[0][0], LinearInputs(x, output, weight, bias)
            )
        width = output.shape[-1] // self.points[0][1].part[1]  # type: ignore[index]
        parts = list(output.split(width, dim=-1))  # each (batch, seq, d_out / parts)
        changed = False
        for point, spec in self.points:
            index = spec.part[0]  # type: ignore[index]
            weight, bias = hook_params(module, spec)
            value = handler.point_forward(
                self.index, LINEAR, point, LinearInputs(x, parts[index], weight, bias)
            )
            if value is not None:
                parts[index], changed = value, True
        return torch.cat(parts, dim=-1) if changed else None


class _EmbeddingHook(AdapterHook):
    """Forward hook on the model's input embedding module (``ArchitectureSpec.embeddings``): the adapters' value
    for the point ``("embedding", "embeddings")``."""

    def __init__(self, handler: PointHandler) -> None:
        self.handler = handler

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        handler = self.handler
        if not handler.uses(EMBEDDING) or not isinstance(output, torch.Tensor):
            return None
        return handler.point_forward(EMBEDDING_LAYER, EMBEDDING, "embeddings", EmbeddingInputs(output))


def unembed(handler: PointHandler, hidden: torch.Tensor) -> torch.Tensor:
    """The last hidden states as an LM head should see them: the adapters' value at ``("embedding", "unembed")``
    (an invertible adapter's inverse), or ``hidden`` unchanged."""
    if not handler.uses(EMBEDDING):
        return hidden
    value = handler.point_forward(EMBEDDING_LAYER, EMBEDDING, "unembed", EmbeddingInputs(hidden))
    return hidden if value is None else value


class _UnembedHook(AdapterHook):
    """Forward pre-hook on the model's own output embeddings (its LM head's vocabulary projection)."""

    def __init__(self, handler: PointHandler) -> None:
        self.handler = handler

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        if not args or not self.handler.uses(EMBEDDING):
            return None
        return (unembed(self.handler, args[0]), *args[1:])


def _call_value(name: str, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return kwargs[name] if name in kwargs else (args[index] if len(args) > index else None)


class _MaskHook(AdapterHook):
    """Forward pre-hook on the base model: the adapters' value for the point ``("embedding", "mask")``, the 2D
    attention mask ``(batch, seq)`` before the model builds its own (prompt tuning adds visible columns)."""

    def __init__(self, handler: PointHandler, decoder: bool) -> None:
        self.handler, self.decoder = handler, decoder

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        handler = self.handler
        if not handler.uses(EMBEDDING):
            return None
        ids = _call_value("input_ids", 0, args, kwargs)
        mask = _call_value("attention_mask", 1, args, kwargs)
        tokens = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
        if not isinstance(tokens, torch.Tensor):
            return None
        given = isinstance(mask, torch.Tensor) and mask.dim() == 2
        base = mask if given else torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        try:
            value = handler.point_forward(EMBEDDING_LAYER, EMBEDDING, "mask", EmbeddingInputs(base))
        except RuntimeError as error:  # rows of different lengths cannot be joined again
            raise UnsupportedArchitectureError(
                "The row blocks of this setup would get prompts of different lengths; BatchSplit over prompt-tuning "
                f"adapters needs one prompt_length in every block ({error})."
            ) from None
        if value is None:
            return None
        if isinstance(mask, torch.Tensor) and not given:
            raise UnsupportedArchitectureError(
                "Prompt tuning extends a 2D attention mask (batch, seq); this call passed one of shape "
                f"{tuple(mask.shape)}."
            )
        if self.decoder and not isinstance(ids, torch.Tensor):
            raise UnsupportedArchitectureError(
                "Prompt tuning on this decoder needs input_ids (with inputs_embeds the embedding module where the "
                "prompt is prepended does not run)."
            )
        cache = kwargs.get("past_key_values")
        if cache is not None and getattr(cache, "get_seq_length", lambda: 0)() > 0:
            raise UnsupportedArchitectureError(
                "Prompt tuning cannot continue from a key/value cache (the prompt would be prepended again); "
                "call generate(..., use_cache=False)."
            )
        positions = kwargs.get("position_ids")
        if self.decoder and positions is None:
            # number the positions explicitly (shifted below): some models (ModernBERT) count them from the ids'
            # length, not the embeddings'
            positions = torch.arange(base.shape[1], device=base.device).unsqueeze(0)  # (1, T)
        if self.decoder and isinstance(positions, torch.Tensor):
            # decoders number positions after the embeddings: the prompt takes 0..P-1, the tokens move by P
            extra = value.shape[1] - base.shape[1]
            front = torch.arange(extra, device=positions.device, dtype=positions.dtype)
            front = front.expand(*positions.shape[:-1], extra)
            kwargs = {**kwargs, "position_ids": torch.cat([front, positions + extra], dim=-1)}
        if "attention_mask" in kwargs or len(args) <= 1:
            return args, {**kwargs, "attention_mask": value}
        return (*args[:1], value, *args[2:]), kwargs


def attach_embedding_points(model: nn.Module, spec: ArchitectureSpec, handler: PointHandler) -> None:
    """Hook the embedding points: the input embedding module named by the spec, the attention mask entering the
    base model, and the model's output embeddings when it has a built-in LM head."""
    if spec.embeddings is None:
        return
    base = get_base_model(model)
    base.get_submodule(spec.embeddings).register_forward_hook(_EmbeddingHook(handler))
    base.register_forward_pre_hook(_MaskHook(handler, spec.pre_norm), with_kwargs=True)
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    if isinstance(output, nn.Module):
        output.register_forward_pre_hook(_UnembedHook(handler))


class SiteInjector:
    """Registers the point hooks of one model (``remove_hooks`` detaches them).

    Hooks are small objects rather than closures so that ``copy.deepcopy(model)`` gives a copy whose hooks point
    at the copy's own adapters."""

    def __init__(self, model: nn.Module, spec: ArchitectureSpec, handler: PointHandler) -> None:
        self.spec = spec
        self.handler = handler
        self._local = threading.local()
        for index, (layer, stack) in enumerate(layer_stacks(model, spec)):
            # linear hooks first: where a site's output is a projection itself (BART's fc2), the site sees the
            # projection's output with the linear adapters applied
            by_module: dict[str, list[tuple[str, LinearSpec]]] = {}
            for point, linear in stack.linears.items():
                by_module.setdefault(linear.module, []).append((point, linear))
            for path, points in by_module.items():
                layer.get_submodule(path).register_forward_hook(_LinearHook(self, index, points))
            for site_name, site in stack.sites.items():
                self._attach_site(layer, index, site_name, site)
        attach_embedding_points(model, spec, handler)

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

    def _attach_site(self, layer: nn.Module, index: int, site_name: str, site: SiteSpec) -> None:
        residual_hook = _ResidualHook(self, (index, site_name, "residual"), site.residual)
        layer.get_submodule(site.residual.module).register_forward_pre_hook(residual_hook, with_kwargs=True)
        layer.get_submodule(site.output).register_forward_hook(_OutputHook(self, index, site_name, site))
        if site.norm is not None:
            layer.get_submodule(site.norm).register_forward_hook(_NormHook(self, index, site_name))
