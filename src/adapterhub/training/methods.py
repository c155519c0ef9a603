"""The paper baselines, each one flag: which parameters train.

* ``full``: every parameter of the base model and the head (full fine-tuning).
* ``head``: the head only (the base model is a frozen feature extractor).
* ``topk:K``: the top ``K`` transformer layers and the head (Houlsby et al.'s variable fine-tuning).
* ``layernorm``: every LayerNorm of the base model and the head.
* ``adapter:<config>``: a new adapter with any config string (``adapter:pfeiffer``,
  ``adapter:houlsby[reduction_factor=64]``) and the head; the base model is frozen. ``adapter`` alone means
  ``adapter:pfeiffer``.

:func:`apply_method` adds the adapter (if any) and sets ``requires_grad`` on every parameter accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from adapterhub.errors import ConfigError, did_you_mean
from adapterhub.runtime.layers import get_base_model, get_layers
from adapterhub.spec.configs import resolve_config

KINDS = ("full", "head", "topk", "layernorm", "adapter")
DEFAULT_LEARNING_RATES = {"full": 2e-5, "topk": 2e-5, "head": 1e-3, "layernorm": 1e-3, "adapter": 1e-3}


@dataclass(frozen=True)
class Method:
    """A parsed method flag. ``text`` is the flag as given; ``k`` for ``topk``; ``adapter_config`` for adapters."""

    kind: str
    text: str
    k: int | None = None
    adapter_config: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"

    @property
    def default_learning_rate(self) -> float:
        return DEFAULT_LEARNING_RATES[self.kind]


def parse_method(text: str) -> Method:
    """``"topk:2"`` -> ``Method("topk", k=2)``; raises :class:`ConfigError` with the valid forms otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"method must be a non-empty string, got {text!r}; {_forms()}")
    text = text.strip()
    kind, _, argument = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"Unknown method {text!r}{did_you_mean(kind, KINDS)}; {_forms()}")
    if kind == "topk":
        if not argument.strip().isdigit() or int(argument) < 1:
            raise ConfigError(f"{text!r}: topk needs a positive number of layers, e.g. topk:2.")
        return Method("topk", text, k=int(argument))
    if kind == "adapter":
        config = argument.strip() or "pfeiffer"
        resolve_config(config)  # raises ConfigError naming the presets / keys
        return Method("adapter", text, adapter_config=config)
    if argument:
        raise ConfigError(f"{text!r}: the method {kind!r} takes no argument; {_forms()}")
    return Method(kind, text)


def _forms() -> str:
    return (
        "use full, head, topk:K, layernorm or adapter:<config> (e.g. adapter:pfeiffer[reduction_factor=16])."
    )


def apply_method(model: nn.Module, method: Method | str, head_name: str, *, with_head: bool = True) -> None:
    """Set ``requires_grad`` on ``model`` (an ``adapterhub.init`` model that already has the head ``head_name``)
    for ``method``, adding and activating an adapter named ``head_name`` for adapter methods.

    ``with_head=False`` (generation: a causal LM predicting with its own output layer): there is no flexible
    head; the model's own output layer stays frozen, and the ``head`` method, which would train nothing else, is
    refused."""
    if isinstance(method, str):
        method = parse_method(method)
    store = model._adapterhub  # type: ignore[attr-defined]
    if with_head and head_name not in store.heads:
        raise ConfigError(f"apply_method: the model has no head named {head_name!r}; add it first.")
    if not with_head and method.kind == "head":
        raise ConfigError(
            "the method 'head' trains a task head, and a generation task has none (the language model's own "
            "output layer predicts the answer); use an adapter method (e.g. adapter:lora) or full."
        )
    if method.is_adapter:
        model.add_adapter(head_name, config=method.adapter_config, overwrite_ok=True)  # type: ignore[operator]
        model.train_adapter(head_name, train_head=with_head)  # type: ignore[operator]
    else:
        model.set_active_adapters(None)  # type: ignore[operator]
        for param in model.parameters():
            param.requires_grad_(False)
        base = get_base_model(model)
        if method.kind == "full":
            for param in base_parameters(model):
                param.requires_grad_(True)
        elif method.kind == "topk":
            layers = get_layers(model, model._spec)  # type: ignore[attr-defined]
            if method.k is not None and method.k > len(layers):
                raise ConfigError(f"{method.text!r}: the model has only {len(layers)} layers.")
            for layer in list(layers)[len(layers) - (method.k or 0) :]:
                layer.requires_grad_(True)
        elif method.kind == "layernorm":
            for module in base.modules():
                if _is_norm(module):
                    module.requires_grad_(True)
            store.requires_grad_(False)  # a bare AutoModel is its own base model: skip our own modules
        if with_head:
            store.heads[head_name].requires_grad_(True)
        model.train()
    if with_head:
        model.active_head = head_name  # type: ignore[attr-defined]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter for every parameter with ``requires_grad`` (what a method trains and saves)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def base_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The base model's own parameters (the body, without adapterhub's adapters and heads)."""
    store = getattr(model, "_adapterhub", None)
    ours = {id(p) for p in store.parameters()} if store is not None else set()
    return [p for p in get_base_model(model).parameters() if id(p) not in ours]


def base_parameter_count(model: nn.Module) -> int:
    """Parameters of the base model (the body without heads or adapters): the denominator of "% of base"."""
    return sum(p.numel() for p in base_parameters(model))
