"""The configs of LoHa and LoKr (the LyCORIS family, as peft 0.21 implements it): a weight update ``ΔW`` built from
factors, added to each target projection, ``y' = W x + b + ΔW x``.

- LoHa (Hyeon-Woo et al. 2022, FedPara): ``ΔW = s · (W1a W1b) ⊙ (W2a W2b)``, a Hadamard product of two rank-``r``
  products (``W1a, W2a: (d_out, r)``, ``W1b, W2b: (r, d_in)``).
- LoKr (Yeh et al. 2024): ``ΔW = s · W1 ⊗ W2``, a Kronecker product with ``d_out = a·b`` and ``d_in = c·d``
  (``W1: (a, c)``, ``W2: (b, d)``), each factor full or a rank-``r`` product (``decompose_both``: ``W1`` too).
- On an ``nn.Conv2d`` / ``nn.Conv1d`` both hold the kernel: over the flattened ``c_in·kh·kw`` / ``c_in·k``
  columns, or with ``use_effective_conv2d`` (kernels larger than 1×1 / 1) as CP-decomposed kernels
  (``methods.lycoris.cp_kernel``).

Both: ``s = alpha / r``; ``rank_dropout`` zeroes rows of ``ΔW`` during training, ``module_dropout`` skips the whole
update of a projection during training. Targets as LoRA's (``ModuleTargeting``): spec points or peft's
``target_modules`` and friends, ``rank_pattern`` / ``alpha_pattern`` per module, ``modules_to_save``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from adapterhub.spec.configs.base import MethodConfig
from adapterhub.spec.configs.checks import check_bool, is_number, require
from adapterhub.spec.configs.targeting import LowRankTargeting


@dataclass(frozen=True, kw_only=True)
class LycorisConfig(LowRankTargeting, MethodConfig):
    """The options LoHa and LoKr share (peft's names): ``r``, ``alpha``, ``rank_dropout``, ``module_dropout``,
    ``use_effective_conv2d`` (peft's option for ``nn.Conv2d`` and ``nn.Conv1d`` targets with a kernel larger than
    1×1 / 1: each kernel factor CP-decomposed, ``K = Σ_ij T[i, j] · a_i ⊗ b_j`` with a core ``T (r, r, kh, kw)``
    (a Conv1d's ``(r, r, k, 1)``) and mode factors over the output and input channels, instead of factors over the
    flattened kernel ``c_in·kh·kw``; no effect on linear projections and 1×1 / 1 kernels), ``init_weights`` (true: the update starts at zero; false: every factor random), and the
    targeting options of LoRA (``targets``, ``leave_out``, ``target_modules``, ``exclude_modules``,
    ``layers_to_transform``, ``layers_pattern``, ``rank_pattern``, ``alpha_pattern``, ``modules_to_save``)."""

    method: ClassVar[str] = ""
    label: ClassVar[str] = ""  # the method's name in messages
    init_choices: ClassVar[tuple[Any, ...]] = (True, False)
    adapts_conv2d: ClassVar[bool] = True

    r: int = 8
    alpha: float = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    use_effective_conv2d: bool = False
    init_weights: bool | str = True

    def __post_init__(self) -> None:
        require(
            isinstance(self.r, int) and not isinstance(self.r, bool) and self.r > 0,
            f"r must be a positive integer, got {self.r!r}.",
        )
        require(
            is_number(self.alpha) and self.alpha > 0, f"alpha must be a positive number, got {self.alpha!r}."
        )
        for name in ("rank_dropout", "module_dropout"):
            value = getattr(self, name)
            require(
                is_number(value) and 0.0 <= value < 1.0, f"{name} must be a number in [0, 1), got {value!r}."
            )
        check_bool("use_effective_conv2d", self.use_effective_conv2d)
        words = tuple(c for c in self.init_choices if isinstance(c, str))
        require(
            isinstance(self.init_weights, bool) or self.init_weights in words,
            f"init_weights must be one of {', '.join(repr(c) for c in self.init_choices)}, got "
            f"{self.init_weights!r}.",
        )
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "rank_dropout", float(self.rank_dropout))
        object.__setattr__(self, "module_dropout", float(self.module_dropout))
        self.check_targeting(self.label)

    def scaling_for(self, r: int, alpha: float) -> float:
        """``s = alpha / r`` for a target of rank ``r`` (``rank_pattern`` / ``alpha_pattern``)."""
        return alpha / r

    @property
    def scaling(self) -> float:
        """``s = alpha / r``."""
        return self.scaling_for(self.r, self.alpha)


@dataclass(frozen=True, kw_only=True)
class LoHaConfig(LycorisConfig):
    """LoHa: ``ΔW = (alpha / r) · (W1a W1b) ⊙ (W2a W2b)``; a new adapter has ``W2b = 0`` (``init_weights``), the other
    factors Kaiming-uniform. Parameters: ``2 r (d_in + d_out)`` per target and layer."""

    method: ClassVar[str] = "loha"
    label: ClassVar[str] = "LoHa"


@dataclass(frozen=True, kw_only=True)
class LoKrConfig(LycorisConfig):
    """LoKr: ``ΔW = (alpha / r) · W1 ⊗ W2``. ``d_out = a·b`` and ``d_in = c·d`` are split by peft's
    ``factorization`` (``decompose_factor``: ``-1`` near the square root, else that factor when it divides);
    ``W2 (b, d)`` is a rank-``r`` product ``W2a W2b`` when ``r < max(b, d) / 2``, else full; ``W1 (a, c)`` is full
    unless ``decompose_both`` and ``r < max(a, c) / 2``. ``rank_dropout_scale`` rescales the kept rows of
    ``rank_dropout`` by ``1 / mean(kept)``. ``init_weights``: true (``W1`` zero), ``"lycoris"`` (``W2`` or ``W2b``
    zero), false (all random)."""

    method: ClassVar[str] = "lokr"
    label: ClassVar[str] = "LoKr"
    init_choices: ClassVar[tuple[Any, ...]] = (True, False, "lycoris")

    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False

    def __post_init__(self) -> None:
        check_bool("decompose_both", self.decompose_both)
        check_bool("rank_dropout_scale", self.rank_dropout_scale)
        factor = self.decompose_factor
        require(
            isinstance(factor, int) and not isinstance(factor, bool) and (factor == -1 or factor > 0),
            f"decompose_factor must be -1 (factors near the square root) or a positive integer, got {factor!r}.",
        )
        super().__post_init__()
