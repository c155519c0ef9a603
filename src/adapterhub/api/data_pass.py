"""What the data-driven LoRA initialisations (EVA, CorDA, LoRA-GA: ``DATA_INITS``) share: each target of the adapter
as a module path with its rank and alpha, a forward pass with no adapter active in which the hooks of the linear and
module points hand each target's input ``x (..., d_in)`` to an observer (``AdapterStore.observing``), and writing
base-modifying factors (``A``, ``B``, the initial ``A0 = A``, ``B0 = B``; the base becomes ``W - s B0 A0``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.api.adapters import AdapterAPIMixin
from adapterhub.errors import ConfigError
from adapterhub.methods.base import MODULE, MODULE_LAYER, PointInputs
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.methods.targeting import pattern_value
from adapterhub.spec.configs import LoRAConfig
from adapterhub.spec.configs.low_rank import DATA_INITS


def call_model(model: Any, inputs: Any) -> Any:
    """The default ``forward_fn``: ``model(**batch)``."""
    return model(**inputs)


def to_device(inputs: Any, device: torch.device) -> Any:
    """A batch (tensor, dict, list or tuple of them) on ``device``."""
    if hasattr(inputs, "to"):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return type(inputs)({k: to_device(v, device) for k, v in inputs.items()})  # type: ignore[call-arg]
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs


def check_not_empty(dataloader: Iterable[Any], what: str) -> None:
    """Refuse a dataloader with ``len() == 0``."""
    if hasattr(dataloader, "__len__") and len(dataloader) == 0:  # type: ignore[arg-type]
        raise ConfigError(f"{what}'s dataloader is empty; give it batches of training data.")


UNREACHED = ": the dataloader's batches must run the model through them (check forward_fn)."


def refuse_missing(missing: Sequence[str], adapter_name: str, what: str, then: str) -> None:
    """Raise a ``ConfigError`` naming the target paths in ``missing`` (if any): ``"{what} target(s) <paths> of
    adapter <name>{then}"``."""
    if missing:
        raise ConfigError(f"{what} target(s) {', '.join(missing)} of adapter {adapter_name!r}{then}")


def require_dataloader(
    dataloader: Iterable[Any] | None, adapter_name: str, init: str, batches: str, keyword: str, getter: str
) -> Iterable[Any]:
    """``dataloader``; refuses ``DATA_INITS[init](adapter_name)`` called with neither a dataloader (``batches`` says
    what it should hold) nor the result of an earlier pass (``keyword``: the argument taking the dict that
    ``getter`` returns)."""
    if dataloader is None:
        raise ConfigError(
            f"{DATA_INITS[init]}({adapter_name!r}) needs a dataloader ({batches}) or {keyword}= (the dict {getter} "
            "returns)."
        )
    return dataloader


@dataclass(frozen=True)
class DataTarget:
    """One target of a data-init adapter: its module ``path``, how the hooks name it (``key``: ``(layer, point)``,
    or ``(MODULE_LAYER, path)``, also what ``_base_linear`` takes) and its rank and alpha."""

    path: str
    key: tuple[int, str]
    r: int
    alpha: float


def observed_key(layer: int, kind: str, point: str) -> tuple[int, str]:
    """The ``DataTarget.key`` of an observer call."""
    return (MODULE_LAYER, point) if kind == MODULE else (layer, point)


class DataPassMixin(AdapterAPIMixin):
    """The parts of a data pass that EVA, CorDA and LoRA-GA share (mixed into the model through their mixins)."""

    def _data_targets(self, name: str, init: str) -> tuple[LoRAAdapter, LoRAConfig, list[DataTarget]]:
        """The adapter ``name`` (a LoRA with ``init``), its config and its targets in module order. Spec-point
        targets must be whole modules (a slice of a fused projection is refused: the result is by module name)."""
        module = self._require_adapter(name)
        config = module.config
        if not isinstance(module, LoRAAdapter) or getattr(config, "init", None) != init:
            raise ConfigError(
                f"Adapter {name!r} is not a LoRA adapter with init={init!r}; this data pass initialises those only "
                f"(add it with {{'method': 'lora', 'init': {init!r}, ...}})."
            )
        assert isinstance(config, LoRAConfig)
        if config.by_name:
            paths = module.module_paths()
        else:
            dims = self.model_dims()
            at = {(m.layer, m.point): m.path for m in dims.modules if m.point is not None}
            paths = {}
            for layer, point, _ in module.lora_targets():
                if (layer, point) not in at:
                    raise ConfigError(
                        f"Target {point!r} of layer {layer} is a slice of a fused projection; init={init!r} reads "
                        "whole modules by name, so target whole modules with target_modules instead."
                    )
                paths[(layer, point)] = at[(layer, point)]
        order = {path: i for i, (path, _) in enumerate(self.named_modules())}  # type: ignore[attr-defined]
        targets = []
        for (layer, point), path in paths.items():
            r = pattern_value(config.rank_pattern, path) if config.by_name else None
            alpha = pattern_value(config.alpha_pattern, path) if config.by_name else None
            key = (MODULE_LAYER, path) if layer == MODULE_LAYER else (layer, point)
            targets.append(
                DataTarget(
                    path,
                    key,
                    config.r if r is None else int(r),  # type: ignore[call-overload]
                    config.alpha if alpha is None else float(alpha),  # type: ignore[arg-type]
                )
            )
        targets.sort(key=lambda t: order.get(t.path, len(order)))
        return module, config, targets

    def _observed_forward(self, observer: Any, forward: Callable[[Any, Any], Any], batch: Any) -> Any:
        """``forward(model, batch)`` with no adapter active, each target's input handed to
        ``observer(layer, kind, point, inputs)``."""
        with self._store.observing(observer), self.adapter_setup(None):  # type: ignore[attr-defined]
            return forward(self, batch)

    @staticmethod
    def _target_layer(module: LoRAAdapter, target: DataTarget) -> LoRALayer:
        layer, point = target.key
        return module.layer_at(layer, ("module", point) if layer == MODULE_LAYER else point)

    def _write_base_factors(
        self, module: LoRAAdapter, targets: list[DataTarget], factors: Mapping[str, tuple[torch.Tensor, ...]]
    ) -> None:
        """Write ``{path: (A (r, d_in), B (d_out, r))}`` into the adapter as its factors and initial factors, and
        make the base ``W - s B0 A0`` (the adapter's ``base_updates``); the adapter is then ready."""
        with torch.no_grad():
            for t in targets:
                lora = self._target_layer(module, t)
                a, b = factors[t.path]
                for param, value in ((lora.lora_A, a), (lora.lora_B, b)):
                    param.copy_(value.to(param.dtype))
                lora.initial_A.copy_(lora.lora_A)
                lora.initial_B.copy_(lora.lora_B)
        self._change_base(module, restore=False)
        module.awaiting_data = False

    def _fresh_targets(self, name: str, init: str) -> tuple[LoRAAdapter, LoRAConfig, list[DataTarget]]:
        """``_data_targets(name, init)`` of an adapter still waiting for its data pass: a second pass is refused
        (the base already holds the first one's residual)."""
        module, config, targets = self._data_targets(name, init)
        if not module.awaiting_data:
            method = DATA_INITS[init]
            raise ConfigError(
                f"Adapter {name!r} (init={init!r}) is initialised already (by {method} or from a file) and its base "
                f"is the residual; to run the data pass again, delete the adapter (which restores the base), add it "
                f"again and call {method} once."
            )
        return module, config, targets

    @staticmethod
    def _check_covers(
        given: Mapping[str, Any],
        targets: list[DataTarget],
        adapter_name: str,
        what: str,
        getter: str,
        note: str = "",
    ) -> None:
        """Refuse a given pass result (``{module path: tensor}``, what ``getter`` returns) that lacks a target."""
        missing = [t.path for t in targets if t.path not in given]
        refuse_missing(
            missing, adapter_name, f"{what} for", f" (keys are module paths, as {getter} returns them{note})."
        )

    def _observer_for(
        self, targets: list[DataTarget], sink: Callable[[DataTarget, torch.Tensor], None]
    ) -> Callable[[int, str, str, PointInputs], None]:
        """An observer that hands each target's input ``x`` to ``sink(target, x)``."""
        by_key = {t.key: t for t in targets}

        def observe(layer: int, kind: str, point: str, inputs: PointInputs) -> None:
            target = by_key.get(observed_key(layer, kind, point))
            if target is not None:
                sink(target, inputs.x)  # type: ignore[attr-defined]

        return observe
