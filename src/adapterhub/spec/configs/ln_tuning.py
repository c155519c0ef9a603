"""The LN tuning config (Zhao et al. 2023, "Tuning LayerNorm in Attention"; peft's ``LNTuningConfig``).

LN tuning trains a copy of chosen normalisation modules (``LayerNorm``, ``RMSNorm`` and the like): while the adapter
is active each chosen norm ``y = norm(x; γ, β)`` computes ``y = norm(x; γ', β')`` with the copy's own trained
parameters ``γ'`` / ``β'`` (initialised to the base's, so a new adapter changes nothing). Nothing else trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from adapterhub.spec.configs.base import MethodConfig
from adapterhub.spec.configs.checks import require
from adapterhub.spec.module_names import ALL_LINEAR, module_names


@dataclass(frozen=True, kw_only=True)
class LNTuningConfig(MethodConfig):
    """LN tuning with peft's options (peft 0.21):

    - ``target_modules``: which norms; ``None`` (default) selects every normalisation module inside the transformer
      layers (a module whose class name ends in ``Norm``, e.g. ``LayerNorm``, ``LlamaRMSNorm``, ``T5LayerNorm``);
      for a post-norm model such as BERT these are the architecture spec's norms. A string is a regex over whole
      module names, a list selects names equal to an entry or ending in ``"." + entry`` (as peft).
    - ``exclude_modules``: the same forms; excluded names are never targets.

    peft's ``modules_to_save`` is not an option here: LN tuning adapters hold only their norm copies."""

    method: ClassVar[str] = "ln_tuning"

    target_modules: str | tuple[str, ...] | None = None
    exclude_modules: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        targets = module_names("target_modules", self.target_modules)
        require(
            targets != ALL_LINEAR,
            "target_modules='all-linear' selects projections; LN tuning adapts normalisation modules: name them "
            "(e.g. ['LayerNorm']) or leave target_modules unset for every norm inside the layers.",
        )
        object.__setattr__(self, "target_modules", targets)
        object.__setattr__(self, "exclude_modules", module_names("exclude_modules", self.exclude_modules))
