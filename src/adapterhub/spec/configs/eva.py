"""EVA's options (Paischer et al. 2024, "Explained Variance Adaptation"; peft 0.21.2's ``EvaConfig``): how
``init="eva"`` draws LoRA's ``A`` from the inputs of each target over batches of data (``adapterhub.methods.eva``
has the math, ``model.initialize_eva`` the data pass)."""

from __future__ import annotations

from dataclasses import dataclass

from adapterhub.spec.configs.checks import check_bool, is_number, require
from adapterhub.spec.configs.data_inits import OptionsConfig


@dataclass(frozen=True)
class EvaConfig(OptionsConfig):
    """``rho`` (≥ 1): a target may take up to ``round(r · rho)`` ranks when ranks are redistributed (the total
    stays the sum of the targets' ``r``); ``tau`` (in [0, 1]): a component has converged when its cosine
    similarity with the previous batch's is ≥ ``tau``; ``use_label_mask`` / ``label_mask_value``: leave out
    positions whose ``labels`` equal ``label_mask_value`` (besides the ``attention_mask``'s padding);
    ``whiten``: divide each component by the square root of its singular value; ``adjust_scaling_factors``:
    ``alpha · r' / r`` for a target whose rank becomes ``r'`` (its scaling ``alpha / r`` stays)."""

    label = "eva_config"

    rho: float = 2.0
    tau: float = 0.99
    use_label_mask: bool = True
    label_mask_value: int = -100
    whiten: bool = False
    adjust_scaling_factors: bool = True

    def __post_init__(self) -> None:
        require(
            is_number(self.rho) and self.rho >= 1.0,
            f"eva_config rho must be a number >= 1, got {self.rho!r}.",
        )
        require(
            is_number(self.tau) and 0.0 <= self.tau <= 1.0,
            f"eva_config tau must be a number in [0, 1], got {self.tau!r}.",
        )
        require(
            isinstance(self.label_mask_value, int) and not isinstance(self.label_mask_value, bool),
            f"eva_config label_mask_value must be an integer, got {self.label_mask_value!r}.",
        )
        for option in ("use_label_mask", "whiten", "adjust_scaling_factors"):
            check_bool(f"eva_config {option}", getattr(self, option))
        object.__setattr__(self, "rho", float(self.rho))
        object.__setattr__(self, "tau", float(self.tau))
