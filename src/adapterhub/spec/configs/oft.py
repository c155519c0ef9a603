"""The configs of OFT and BOFT (orthogonal finetuning, as peft 0.21 implements them): the input of each target
projection ``y = W x + b`` is rotated by a learned orthogonal matrix, ``y' = W Rᵀ x + b``, i.e. the weight becomes
``W Rᵀ`` (its rows rotated in input space; their norms and angles kept).

- OFT (Qiu et al. 2023; peft's current OFT): ``R = blockdiag(R_1, ..., R_r)`` with ``r`` blocks of size
  ``oft_block_size`` (``r · oft_block_size = d_in``), each the Cayley transform of a skew-symmetric matrix (exact,
  or its Neumann series), optionally one block shared by all (``block_share``) and kept near the identity
  (``coft``, radius ``eps``).
- BOFT (Liu et al. 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization"): ``R`` is a
  product of ``boft_n_butterfly_factor`` block-diagonal orthogonal matrices conjugated by butterfly permutations,
  and a trained scale ``s`` per output: ``y' = s ⊙ (W Rᵀ x) + b``.

Targets as LoRA's (``ModuleTargeting``): spec points or peft's ``target_modules`` and friends, ``modules_to_save``;
``nn.Linear`` and GPT-2 ``Conv1D`` only. Neither method has a rank or alpha pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from adapterhub.spec.configs.base import MethodConfig
from adapterhub.spec.configs.checks import check_bool, is_number, require
from adapterhub.spec.configs.targeting import NamedTargeting


def _count(name: str, value: object) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        f"{name} must be a non-negative integer, got {value!r}.",
    )


def _no_bias(label: str, bias: object) -> None:
    require(
        bias == "none",
        f"bias={bias!r}: peft then trains the model's biases too, which adapterhub's {label} does not hold; use "
        "bias='none' (or put the biased module in modules_to_save).",
    )


@dataclass(frozen=True, kw_only=True)
class OFTConfig(NamedTargeting, MethodConfig):
    """OFT with peft's options (peft 0.21): exactly one of ``r`` (number of blocks per target) and ``oft_block_size``
    (their size; default 32) is non-zero, the other follows from ``d_in`` (a value that does not divide ``d_in`` is
    moved to the nearest divisor, with a warning, as peft does). ``use_cayley_neumann`` (default true): each block
    is ``I + 2Q + 2Q² + ... + Q^(n-1)`` (``n = num_cayley_neumann_terms``, peft's truncated series) instead of the
    exact Cayley transform ``(I - Q)(I + Q)⁻¹`` of its skew-symmetric ``Q``. ``block_share``: one block for all.
    ``coft``: before each use, ``Q`` is projected onto the Frobenius ball of radius ``eps / sqrt(blocks)``
    (written back into the parameter, as peft does). ``module_dropout``: while training, that share of the blocks
    is replaced by the identity (peft 0.21 builds this dropout but its Linear forward never applies it).
    ``init_weights``: true starts at ``Q = 0`` (``R = I``, the identity), false draws ``N(0, 0.1²)``.
    ``fan_in_fan_out``: peft's flag for Conv1D weights (the module's type decides here); ``bias``: ``"none"`` only.
    """

    method: ClassVar[str] = "oft"
    alpha: ClassVar[float] = 1.0  # type: ignore[misc]
    rank_pattern: ClassVar[tuple[tuple[str, int], ...]] = ()  # type: ignore[misc]
    alpha_pattern: ClassVar[tuple[tuple[str, float], ...]] = ()  # type: ignore[misc]

    r: int = 0
    oft_block_size: int = 32
    module_dropout: float = 0.0
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5
    init_weights: bool = True
    fan_in_fan_out: bool = False
    bias: str = "none"

    def __post_init__(self) -> None:
        _count("r", self.r)
        _count("oft_block_size", self.oft_block_size)
        require(
            (self.r == 0) != (self.oft_block_size == 0),
            f"Set exactly one of r ({self.r}) and oft_block_size ({self.oft_block_size}) to a positive value and "
            "the other to 0: r x oft_block_size = the projection's input width, so one decides the other.",
        )
        terms = self.num_cayley_neumann_terms
        require(
            isinstance(terms, int) and not isinstance(terms, bool) and terms >= 1,
            f"num_cayley_neumann_terms must be a positive integer, got {terms!r}.",
        )
        require(is_number(self.eps) and self.eps > 0, f"eps must be a positive number, got {self.eps!r}.")
        require(
            is_number(self.module_dropout) and 0.0 <= self.module_dropout < 1.0,
            f"module_dropout must be a number in [0, 1), got {self.module_dropout!r}.",
        )
        for name in ("coft", "block_share", "use_cayley_neumann", "init_weights", "fan_in_fan_out"):
            check_bool(name, getattr(self, name))
        _no_bias("OFT", self.bias)
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "module_dropout", float(self.module_dropout))
        self.check_targeting("OFT")

    def scaling_for(self, r: int, alpha: float) -> float:
        """OFT has no scaling factor: 1."""
        return 1.0


@dataclass(frozen=True, kw_only=True)
class BOFTConfig(NamedTargeting, MethodConfig):
    """BOFT with peft's options (peft 0.21): exactly one of ``boft_block_size`` (default 4) and ``boft_block_num``
    is non-zero and must divide ``d_in`` (no adjustment: an error, as peft); ``boft_n_butterfly_factor`` ``m``
    (default 1 = OFT with a scale): ``R = B_m ⋯ B_1``, ``B_i = P_i blockdiag(R_i1, ...) P_iᵀ`` with butterfly
    permutations ``P_i``, each block the exact Cayley transform of its (skew-symmetrised) parameter;
    ``boft_dropout``: while training, that share of the blocks of one randomly chosen factor becomes the identity.
    A new adapter (``init_weights``) has zero blocks and ``s = 1`` (the identity); false draws ``N(0, 0.1²)`` and
    ``s ~ N(1, 0.1²)``. ``fan_in_fan_out``: as OFT; ``bias``: ``"none"`` only."""

    method: ClassVar[str] = "boft"
    r: ClassVar[int] = 0  # type: ignore[misc]
    alpha: ClassVar[float] = 1.0  # type: ignore[misc]
    rank_pattern: ClassVar[tuple[tuple[str, int], ...]] = ()  # type: ignore[misc]
    alpha_pattern: ClassVar[tuple[tuple[str, float], ...]] = ()  # type: ignore[misc]

    boft_block_size: int = 4
    boft_block_num: int = 0
    boft_n_butterfly_factor: int = 1
    boft_dropout: float = 0.0
    init_weights: bool = True
    fan_in_fan_out: bool = False
    bias: str = "none"

    def __post_init__(self) -> None:
        _count("boft_block_size", self.boft_block_size)
        _count("boft_block_num", self.boft_block_num)
        require(
            (self.boft_block_size == 0) != (self.boft_block_num == 0),
            f"Set exactly one of boft_block_size ({self.boft_block_size}) and boft_block_num "
            f"({self.boft_block_num}) to a positive value and the other to 0: their product is the projection's "
            "input width, so one decides the other.",
        )
        factor = self.boft_n_butterfly_factor
        require(
            isinstance(factor, int) and not isinstance(factor, bool) and factor >= 1,
            f"boft_n_butterfly_factor must be a positive integer (1: plain OFT blocks), got {factor!r}.",
        )
        require(
            is_number(self.boft_dropout) and 0.0 <= self.boft_dropout < 1.0,
            f"boft_dropout must be a number in [0, 1), got {self.boft_dropout!r}.",
        )
        for name in ("init_weights", "fan_in_fan_out"):
            check_bool(name, getattr(self, name))
        _no_bias("BOFT", self.bias)
        object.__setattr__(self, "boft_dropout", float(self.boft_dropout))
        self.check_targeting("BOFT")

    def scaling_for(self, r: int, alpha: float) -> float:
        """BOFT has no scaling factor (``s`` is trained): 1."""
        return 1.0
