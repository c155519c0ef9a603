"""The options of LoRA's data-driven, base-modifying initialisations (peft 0.21.2's ``CordaConfig`` and
``LoraGAConfig``): how ``init="corda"`` and ``init="lora_ga"`` turn statistics of data into ``A``, ``B`` and a
residual base (``adapterhub.methods.corda`` / ``adapterhub.methods.lora_ga`` have the math, ``model.initialize_corda``
/ ``model.initialize_lora_ga`` the data passes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from adapterhub.errors import ConfigError
from adapterhub.spec.configs.checks import check_bool, check_choice, require

CORDA_METHODS = ("ipm", "kpm")
LORA_GA_DIRECTIONS = ("ArBr", "A2rBr", "ArB2r", "random")
LORA_GA_SCALES = ("stable", "weight_svd", "gd_scale", "unit")
# peft's CordaConfig keys about files and progress output, not about the numbers: accepted and dropped
CORDA_RUNTIME_KEYS = ("cache_file", "covariance_file", "verbose", "prune_temporary_fields")

Sub = TypeVar("Sub", bound="OptionsConfig")


class OptionsConfig:
    """``from_value`` / ``pairs`` of a frozen options dataclass held by ``LoRAConfig`` as ``(key, value)`` pairs
    (``CordaConfig``, ``LoraGAConfig`` and ``adapterhub.spec.configs.eva.EvaConfig``); ``label``: its ``LoRAConfig``
    key, named in errors."""

    label = ""
    ignored: tuple[str, ...] = ()

    @classmethod
    def from_value(cls: type[Sub], value: Any) -> Sub:
        """From ``None`` (the defaults), a dict (peft's keys) or ``(key, value)`` pairs; unknown keys are refused,
        naming the valid ones (``ignored`` keys, peft's file options, are dropped)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, tuple) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            value = dict(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{cls.label} must be a dict of options, got {type(value).__name__}.")
        valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = [k for k in value if k not in valid and k not in cls.ignored]
        if unknown:
            raise ConfigError(
                f"Unknown {cls.label} key(s) {', '.join(repr(k) for k in unknown)}. Valid keys: {', '.join(valid)}."
            )
        return cls(**{k: v for k, v in value.items() if k in valid})

    def pairs(self) -> tuple[tuple[str, Any], ...]:
        """The options as ``(key, value)`` pairs (how ``LoRAConfig`` holds them; written as a dict)."""
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class CordaConfig(OptionsConfig):
    """CorDA (Yang et al. 2024): ``corda_method`` ``"ipm"`` (instruction-previewed: ``A``, ``B`` from the largest
    singular values of ``W C``, ``C`` the covariance of the target's inputs) or ``"kpm"`` (knowledge-preserved: from
    the smallest); ``use_float16_for_covariance``: accumulate the covariance in the inputs' dtype instead of float32
    (as peft). peft's ``cache_file`` / ``covariance_file`` / ``verbose`` / ``prune_temporary_fields`` are accepted and
    dropped (``model.get_corda_covariance`` returns the covariances to keep instead)."""

    label = "corda_config"
    ignored = CORDA_RUNTIME_KEYS

    corda_method: str = "ipm"
    use_float16_for_covariance: bool = False

    def __post_init__(self) -> None:
        check_choice("corda_config corda_method", self.corda_method, CORDA_METHODS)
        check_bool("corda_config use_float16_for_covariance", self.use_float16_for_covariance)


@dataclass(frozen=True)
class LoraGAConfig(OptionsConfig):
    """LoRA-GA (Wang et al. 2024): ``direction``: which of the gradient's first ``2r`` singular directions go to
    ``A`` and which to ``B`` (``"ArB2r"``: ``A`` the first ``r`` right ones, ``B`` the next ``r`` left ones; ``"A2rBr"``
    the other way; ``"ArBr"`` alternating; ``"random"`` a random half for both); ``scale``: ``"stable"`` (``B``
    times ``d_out^¼ / sqrt(stable_gamma)``), ``"weight_svd"`` (``B`` times ``σ₁(W) / S_B[0]``), ``"gd_scale"``
    (``A``, ``B`` divided by the LoRA scaling) or ``"unit"``."""

    label = "lora_ga_config"

    direction: str = "ArB2r"
    scale: str = "stable"
    stable_gamma: int = 16

    def __post_init__(self) -> None:
        check_choice("lora_ga_config direction", self.direction, LORA_GA_DIRECTIONS)
        check_choice("lora_ga_config scale", self.scale, LORA_GA_SCALES)
        require(
            isinstance(self.stable_gamma, (int, float))
            and not isinstance(self.stable_gamma, bool)
            and self.stable_gamma > 0,
            f"lora_ga_config stable_gamma must be a positive number, got {self.stable_gamma!r}.",
        )
