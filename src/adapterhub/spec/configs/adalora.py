"""The AdaLoRA config (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"; peft's
``AdaLoraConfig``, peft 0.21).

For a projection ``y = W x + b`` with ``W: (d_out, d_in)``, AdaLoRA adds an update in SVD form::

    y' = y + B ((A dropout(x)) ⊙ E) · alpha / (init_r + 1e-5)      A: (r, d_in)  E: (r, 1)  B: (d_out, r)

``E`` holds the singular values; a rank allocator zeroes the least important ones during training so that the
average rank per target falls from ``init_r`` to ``target_r`` (the schedule below). ``rank_pattern`` is the
allocator's result: per target, which of its ``init_r`` singular values are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from adapterhub.spec.configs.base import OMIT_DEFAULT, MethodConfig
from adapterhub.spec.configs.checks import is_number, require
from adapterhub.spec.configs.targeting import NamedTargeting

RankPattern = tuple[tuple[str, tuple[bool, ...]], ...]


def _count(name: str, value: Any, least: int) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= least,
        f"{name} must be an integer >= {least}, got {value!r}.",
    )


@dataclass(frozen=True, kw_only=True)
class AdaLoraConfig(NamedTargeting, MethodConfig):
    """AdaLoRA with peft's options: ``init_r`` (the rank every target starts with, default 12), ``target_r`` (the
    average rank the budget ends at, default 8), ``alpha`` (peft's ``lora_alpha``; the update is scaled by
    ``alpha / init_r``), ``dropout`` (on the update's input), and the allocator's schedule:

    - ``total_step``: the number of optimizer steps of the run (None: the training loop's step count);
    - steps ``1..tinit``: warm-up, every singular value kept (budget ``init_r`` per target);
    - steps ``tinit+1 .. total_step-tfinal``: every ``deltaT`` steps the budget (summed over targets) is
      ``target + (init - target) · (1 - (t - tinit) / (total_step - tfinal - tinit))³`` and the singular values
      with the lowest importance are zeroed down to it;
    - step ``total_step - tfinal``: the final masking at the target budget, kept fixed from then on.

    Importance per entry: ``I = |w · ∂L/∂w|``, smoothed ``Ī ← beta1 Ī + (1 - beta1) I`` and its uncertainty
    ``Ū ← beta2 Ū + (1 - beta2) |I - Ī|``; a singular value's score is ``Ī·Ū`` of its ``E`` entry plus the means of
    ``Ī·Ū`` over its row of ``A`` and its column of ``B``. ``orth_reg_weight``: the training loss gains
    ``orth_reg_weight · mean over A and B of every target of ‖P Pᵀ - I‖_F`` (``A Aᵀ``, ``Bᵀ B``).

    ``rank_pattern`` (set by the allocator, or read from a file): ``{target: [kept, ...]}`` with ``init_r`` booleans
    per target; the target is its module path when targeted by name, else ``layers.<i>.<point>``. Targets as
    LoRA's (spec points, or ``target_modules`` with the by-name options and ``modules_to_save``); one initial rank
    for every target, so there is no per-module ``alpha_pattern``."""

    method: ClassVar[str] = "adalora"
    module_patterns: ClassVar[bool] = (
        False  # rank_pattern is the allocator's masks, not a {regex: rank} table
    )
    alpha_pattern: ClassVar[tuple[tuple[str, float], ...]] = ()  # type: ignore[misc]

    alpha: float = 8
    dropout: float = 0.0
    init_r: int = 12
    target_r: int = 8
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None
    rank_pattern: RankPattern | None = field(default=None, metadata={OMIT_DEFAULT: True})  # type: ignore[assignment]

    def __post_init__(self) -> None:
        require(
            is_number(self.alpha) and self.alpha > 0, f"alpha must be a positive number, got {self.alpha!r}."
        )
        require(
            is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            f"dropout must be a number in [0, 1), got {self.dropout!r}.",
        )
        _count("init_r", self.init_r, 1)
        _count("target_r", self.target_r, 1)
        _count("tinit", self.tinit, 0)
        _count("tfinal", self.tfinal, 0)
        _count("deltaT", self.deltaT, 1)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            require(is_number(value) and 0 < value < 1, f"{name} must be a number in (0, 1), got {value!r}.")
        require(
            is_number(self.orth_reg_weight) and self.orth_reg_weight >= 0,
            f"orth_reg_weight must be a number >= 0, got {self.orth_reg_weight!r}.",
        )
        if self.total_step is not None:
            _count("total_step", self.total_step, 1)
            self.check_schedule(self.total_step)
        for name in ("alpha", "dropout", "beta1", "beta2", "orth_reg_weight"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "rank_pattern", self._masks(self.rank_pattern))
        self.check_targeting("AdaLoRA")

    def check_schedule(self, total_step: int) -> None:
        """Raise a ConfigError unless ``total_step`` leaves a budgeting phase (``tinit < total_step - tfinal``), as
        peft's config does."""
        require(
            self.tinit < total_step - self.tfinal,
            f"AdaLoRA's schedule has no budgeting phase: tinit={self.tinit} and tfinal={self.tfinal} leave no step "
            f"between them in a run of {total_step} steps; lower tinit / tfinal or train for more steps.",
        )

    def check_trainable(self, total_step: int) -> None:
        """``check_schedule``, and ``target_r <= init_r`` (checked when training starts: peft's files may hold a
        larger ``target_r``, harmless for inference)."""
        require(
            self.target_r <= self.init_r,
            f"target_r={self.target_r} is above init_r={self.init_r}: AdaLoRA's allocator only lowers ranks; set "
            "target_r <= init_r to train.",
        )
        self.check_schedule(total_step)

    def _masks(self, value: Any) -> RankPattern | None:
        if value is None:
            return None
        pairs = list(value.items()) if isinstance(value, Mapping) else value
        require(
            isinstance(pairs, (list, tuple)),
            f"rank_pattern must map each target to its kept singular values ({{target: [true, false, ...]}}), "
            f"got {value!r}.",
        )
        out = []
        for pair in pairs:
            require(
                isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str),
                f"rank_pattern must map target names to lists of booleans, got the entry {pair!r}.",
            )
            key, mask = pair
            require(
                isinstance(mask, (list, tuple))
                and len(mask) == self.init_r
                and all(isinstance(m, bool) for m in mask),
                f"rank_pattern[{key!r}] must be {self.init_r} booleans (one per singular value, init_r), got "
                f"{mask!r}.",
            )
            out.append((key, tuple(mask)))
        return tuple(out)

    @property
    def r(self) -> int:  # type: ignore[override]
        """The rank every target is built with: ``init_r``."""
        return self.init_r

    @property
    def scaling(self) -> float:
        """The update's factor ``alpha / (init_r + 1e-5)`` (peft's ``scaling / ranknum``)."""
        return self.scaling_for(self.init_r, self.alpha)

    def scaling_for(self, r: int, alpha: float) -> float:
        """``alpha / (r + 1e-5)``."""
        return alpha / (r + 1e-5)
