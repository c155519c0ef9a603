"""The VeRA config (Kopiczko et al. 2024, "Vector-based Random Matrix Adaptation"; peft's ``VeraConfig``).

For a projection ``y = W x + b`` with ``W: (d_out, d_in)``, VeRA adds::

    y' = y + Λ_b B Λ_d A dropout(x)        A: (r, d_in)   B: (d_out, r)   Λ_d = diag(λ_d) (r)   Λ_b = diag(λ_b) (d_out)

``A`` and ``B`` are frozen random matrices shared by every targeted projection of the adapter: one pair sized to
the largest ``d_in`` / ``d_out`` among the targets and sliced per projection (``A[:, :d_in]``, ``B[:d_out, :]``),
drawn from ``projection_prng_key``; only the vectors ``λ_d`` and ``λ_b`` are trained (``r + d_out`` per target).

``lambda_form="matrix"`` is the `adapters` library's (1.3) variant: ``Λ_d (r, r)`` and ``Λ_b (d_out, d_out)`` are
trained as full matrices (started at ``diag(λ_d)`` / ``diag(λ_b)``; training fills their off-diagonal entries,
``r² + d_out²`` per target) and the update is multiplied by ``scaling`` (that library's ``alpha / r``)::

    y' = y + scaling · Λ_b B Λ_d A dropout(x)

``use_gating`` (that library's gated VeRA, either form) replaces ``scaling`` by a per-row gate::

    y' = y + mean_T sigmoid(g(x)) · Λ_b B Λ_d A dropout(x)        g = Linear(d_in, 1) per target

``use_dora`` (that library's DVoRA, either form, gated or not) rescales the whole output per row::

    y' = m / ‖W + Λ_b B Λ_d A‖ ⊙ (W x + b + update(x))          m: (d_out,), started at ‖W‖ per row
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from adapterhub.spec.configs.base import OMIT_DEFAULT, MethodConfig
from adapterhub.spec.configs.checks import check_bool, is_number, require
from adapterhub.spec.configs.targeting import ModuleTargeting


@dataclass(frozen=True, kw_only=True)
class VeraConfig(ModuleTargeting, MethodConfig):
    """VeRA with peft's options (peft 0.21): ``r`` (default 256: VeRA's rank is large, its parameters few),
    ``projection_prng_key`` (the seed of ``A`` and ``B``: the same key gives peft's matrices), ``save_projection``
    (whether ``A`` / ``B`` are saved with the adapter; false: regenerated from the key when loaded),
    ``vera_dropout`` (on the input of the update), ``d_initial`` (a new adapter has ``λ_d = d_initial`` and
    ``λ_b = b_initial``, default 0, so it is the identity; ``init_weights=False``: ``λ_d ~ N(0, 1)``, ``λ_b = 1``),
    ``lambda_form`` (``"vector"``: peft's and the paper's VeRA; ``"matrix"``: the `adapters` library's, full trained
    ``Λ_d`` / ``Λ_b`` started at the diagonal of those vectors), ``scaling`` (the update's factor, 1 in peft; the
    `adapters` library's ``alpha / r``), ``use_gating`` (the `adapters` library's gated VeRA: a gate
    ``Linear(d_in, 1)`` per target whose ``mean_T sigmoid(gate(x))`` multiplies the update in place of
    ``scaling``; not mergeable), ``use_dora`` (the `adapters` library's DVoRA: a magnitude ``m`` per target,
    started at ``‖W‖`` per row, and the output ``m / ‖W + ΔW‖ · (W x + b + update)`` with ``ΔW`` without
    ``scaling``), ``fan_in_fan_out``
    (peft's flag for Conv1D weights; the module's type decides here, as peft corrects it), ``bias`` (``"none"``
    only: no bias is trained), ``modules_to_save``.

    Targets as LoRA's: spec points (``targets``, default ``q``, ``v``; ``leave_out``) or peft's ``target_modules``
    with ``layers_to_transform`` / ``layers_pattern``; only ``nn.Linear`` and GPT-2 ``Conv1D`` (as peft). VeRA has
    one rank for every target (``A`` / ``B`` are shared), so there is no ``rank_pattern``, ``alpha_pattern`` or
    ``exclude_modules``."""

    method: ClassVar[str] = "vera"
    # one rank and no alpha or per-module patterns (class constants, not options): what the targeting code reads
    alpha: ClassVar[float] = 1.0  # type: ignore[misc]
    rank_pattern: ClassVar[tuple[tuple[str, int], ...]] = ()  # type: ignore[misc]
    alpha_pattern: ClassVar[tuple[tuple[str, float], ...]] = ()  # type: ignore[misc]
    exclude_modules: ClassVar[None] = None  # type: ignore[misc]

    r: int = 256
    targets: tuple[str, ...] = None  # type: ignore[assignment]  # None: ("q", "v"); () with target_modules
    leave_out: tuple[int, ...] = field(default_factory=tuple)
    projection_prng_key: int = 0
    save_projection: bool = True
    vera_dropout: float = 0.0
    d_initial: float = 0.1
    fan_in_fan_out: bool = False
    bias: str = "none"
    init_weights: bool = True
    b_initial: float = field(default=0.0, metadata={OMIT_DEFAULT: True})
    lambda_form: str = field(default="vector", metadata={OMIT_DEFAULT: True})
    scaling: float = field(default=1.0, metadata={OMIT_DEFAULT: True})
    use_gating: bool = field(default=False, metadata={OMIT_DEFAULT: True})
    use_dora: bool = field(default=False, metadata={OMIT_DEFAULT: True})
    target_modules: str | tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    layers_to_transform: tuple[int, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    layers_pattern: tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    modules_to_save: tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        require(
            isinstance(self.r, int) and not isinstance(self.r, bool) and self.r > 0,
            f"r must be a positive integer, got {self.r!r}.",
        )
        key = self.projection_prng_key
        require(
            isinstance(key, int) and not isinstance(key, bool) and 0 <= key < 2**64,
            f"projection_prng_key must be an integer seed in [0, 2**64), got {key!r}.",
        )
        for name in ("save_projection", "fan_in_fan_out", "init_weights", "use_gating", "use_dora"):
            check_bool(name, getattr(self, name))
        require(
            is_number(self.vera_dropout) and 0.0 <= self.vera_dropout < 1.0,
            f"vera_dropout must be a number in [0, 1), got {self.vera_dropout!r}.",
        )
        require(is_number(self.d_initial), f"d_initial must be a number, got {self.d_initial!r}.")
        require(is_number(self.b_initial), f"b_initial must be a number, got {self.b_initial!r}.")
        require(is_number(self.scaling), f"scaling must be a number, got {self.scaling!r}.")
        require(
            self.lambda_form in ("vector", "matrix"),
            f"lambda_form must be 'vector' (peft's VeRA) or 'matrix' (the `adapters` library's), got "
            f"{self.lambda_form!r}.",
        )
        require(
            self.bias == "none",
            f"bias={self.bias!r}: peft then trains the model's biases too, which adapterhub's VeRA does not hold; "
            "use bias='none' (or put the biased module in modules_to_save).",
        )
        object.__setattr__(self, "vera_dropout", float(self.vera_dropout))
        for name in ("d_initial", "b_initial", "scaling"):
            object.__setattr__(self, name, float(getattr(self, name)))
        self.check_targeting("VeRA")

    def scaling_for(self, r: int, alpha: float) -> float:
        """No LoRA-style ``alpha / r`` for the targeting code: 1 (VeRA's own factor is ``scaling``, applied by its
        layers)."""
        return 1.0
