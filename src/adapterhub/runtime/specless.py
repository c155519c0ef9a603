"""Models without an ``ArchitectureSpec``: a custom ``nn.Module`` (an MLP, a CNN) or a transformers model of a
type no spec describes. The one place that decides what such a model can carry.

Such a model gets ``MODULES_ONLY``, a spec with no layer stack and no points: every spec walk (layers, sites,
projections, embeddings) then finds nothing, and adapters reach the model through module names alone
(``target_modules``: the ``module`` attachment kind). ``check_carries`` refuses, before anything is built, every
adapter that needs a spec's points (the bottleneck family, prefix and prompt tuning, (IA)³ and LoRA by spec point).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from adapterhub.errors import ConfigError, UnsupportedArchitectureError
from adapterhub.spec.architectures import ArchitectureSpec, spec_for_config
from adapterhub.spec.configs import MethodConfig

MODULES_ONLY = ArchitectureSpec(model_types=("",), layers="", sites={})


def model_spec(model: nn.Module) -> ArchitectureSpec:
    """The spec of ``model``: its transformers config's entry, else ``MODULES_ONLY`` (no config, or a model type
    without a spec)."""
    config = getattr(model, "config", None)
    if not getattr(config, "model_type", None):
        return MODULES_ONLY
    try:
        return spec_for_config(config)
    except UnsupportedArchitectureError:
        return MODULES_ONLY


def is_spec_less(spec: ArchitectureSpec) -> bool:
    """Whether ``spec`` is ``MODULES_ONLY`` (the model has no spec of its own)."""
    return spec is MODULES_ONLY


def model_type_of(model: Any) -> str:
    """``config.model_type`` of a transformers model, else the model's class name."""
    return str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)


def check_carries(spec: ArchitectureSpec, config: MethodConfig, model_type: str) -> None:
    """Raise when a model with ``spec`` cannot carry an adapter of ``config``: a model without a spec carries only
    adapters that target modules by name (LoRA, rsLoRA, DoRA and (IA)³ with ``target_modules``); a spec that refuses
    the method (``unsupported["method:NAME"]``) refuses it with its reason before the adapter is built."""
    reason = spec.unsupported.get(f"method:{config.method}")
    if reason is not None:
        raise ConfigError(f"{config.method} adapters cannot attach to this {model_type} model: {reason}")
    if not is_spec_less(spec) or getattr(config, "by_name", False):
        return
    by_point = config.method in ("lora", "dora", "ia3")
    advice = (
        f"Name the modules instead: {config.method} with target_modules (e.g. target_modules=['fc1', 'fc2'], a "
        "regex, or 'all-linear')."
        if by_point
        else "Methods that work on any model, by module name: LoRA, rsLoRA (use_rslora=True), DoRA and (IA)³, "
        "with target_modules."
    )
    raise UnsupportedArchitectureError(
        f"{model_type!r} has no ArchitectureSpec, so it carries only adapters that target modules by name; "
        f"{config.method!r}{' by spec point (targets=...)' if by_point else ''} attaches at the points a spec "
        f"names (transformer layers, residual sites, projections, attention, embeddings). {advice} To use the other methods (bottleneck adapters, prefix and prompt tuning, "
        "LoRA and (IA)³ by spec point), describe the model with adapterhub.register_architecture(ArchitectureSpec(...)) "
        "(docs/ARCHITECTURES.md)."
    )


def check_heads(spec: ArchitectureSpec, model_type: str) -> None:
    """Raise when a model with ``spec`` cannot carry flexible heads (a model without a spec: heads read the hidden
    states of a transformer body the spec locates)."""
    if is_spec_less(spec):
        raise UnsupportedArchitectureError(
            f"{model_type!r} has no ArchitectureSpec, so it cannot carry flexible heads (they read the hidden states "
            "of the transformer body a spec locates). Keep a trainable copy of the model's own output layer with "
            "modules_to_save instead, or describe the "
            "model with adapterhub.register_architecture(ArchitectureSpec(...)) (docs/ARCHITECTURES.md)."
        )
