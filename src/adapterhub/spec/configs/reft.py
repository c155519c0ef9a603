"""The ReFT configs (Wu et al. 2024, "ReFT: Representation Finetuning for Language Models"), as the `adapters`
library 1.3 defines them (``ReftConfig``, ``LoReftConfig``, ``NoReftConfig``, ``DiReftConfig``).

A ReFT adapter *intervenes* on the output ``h`` (``(d,)`` per position) of chosen transformer layers, at the first
``prefix_positions`` and the last ``suffix_positions`` non-padding positions of each sequence::

    s  = f(W h + b)                       W: (r, d), b: (r,), f = non_linearity (identity when None)
    s  = s - R h      (subtract_projection)   R: (r, d), orthonormal rows when ``orthogonality``
    h' = dropout(h + Rᵀ s)

LoReFT (``orthogonality=True``, subtraction): ``h' = h + Rᵀ(W h + b - R h)``; NoReFT: the same without the
orthogonality constraint; DiReFT: neither orthogonality nor subtraction (``h' = h + Rᵀ(W h + b)``). Nothing of
the base model trains, only ``W``, ``b`` and ``R`` of each intervention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from adapterhub.spec.configs.base import MethodConfig
from adapterhub.spec.configs.bottleneck import ACTIVATIONS
from adapterhub.spec.configs.checks import check_bool, check_choice, is_number, layer_list, require


def _count(name: str, value: object, minimum: int) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{name} must be an integer >= {minimum}, got {value!r}.",
    )


@dataclass(frozen=True, kw_only=True)
class ReftConfig(MethodConfig):
    """A ReFT intervention (defaults: the `adapters` library's ``LoReftConfig``):

    - ``layers``: ``"all"`` or a list of layer indices whose output is intervened on;
    - ``prefix_positions`` / ``suffix_positions``: how many of the first / last non-padding positions of each row
      (read from the call's attention mask; without one, the first / last positions of the row);
    - ``r``: the rank (rows of ``W`` and ``R``);
    - ``orthogonality``: keep ``R``'s rows orthonormal (torch's orthogonal parametrization);
    - ``tied_weights``: one intervention (``W``, ``b``, ``R``) for prefix and suffix positions; otherwise the prefix
      positions use the first and the suffix positions the second of two;
    - ``subtract_projection``: subtract ``R h`` (LoReFT, NoReFT) or not (DiReFT);
    - ``dropout``: dropout on the intervened value ``h'`` while training;
    - ``non_linearity``: ``f`` applied to ``W h + b`` (None: identity).
    """

    method: ClassVar[str] = "reft"

    layers: str | tuple[int, ...] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = True
    tied_weights: bool = False
    subtract_projection: bool = True
    dropout: float = 0.05
    non_linearity: str | None = None

    def __post_init__(self) -> None:
        if self.layers != "all":
            require(
                not isinstance(self.layers, str),
                f"layers must be 'all' or a list of layer indices, got {self.layers!r}.",
            )
            object.__setattr__(self, "layers", layer_list("layers", self.layers))
            require(bool(self.layers), "layers=[] intervenes nowhere; name at least one layer, or 'all'.")
        _count("prefix_positions", self.prefix_positions, 0)
        _count("suffix_positions", self.suffix_positions, 0)
        require(
            self.prefix_positions + self.suffix_positions > 0,
            "prefix_positions and suffix_positions are both 0: the intervention would touch no position; set at "
            "least one of them.",
        )
        _count("r", self.r, 1)
        for name in ("orthogonality", "tied_weights", "subtract_projection"):
            check_bool(name, getattr(self, name))
        require(
            is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            f"dropout must be a number in [0, 1), got {self.dropout!r}.",
        )
        if self.non_linearity is not None:
            name = self.non_linearity.lower() if isinstance(self.non_linearity, str) else self.non_linearity
            check_choice("non_linearity", name, ACTIVATIONS)
            object.__setattr__(self, "non_linearity", name)

    def intervenes_at(self, layer: int) -> bool:
        """Whether the output of ``layer`` is intervened on."""
        return self.layers == "all" or layer in self.layers


def loreft() -> ReftConfig:
    """LoReFT: orthonormal ``R``, with the projection subtracted (``h + Rᵀ(W h + b - R h)``)."""
    return ReftConfig()


def noreft() -> ReftConfig:
    """NoReFT: LoReFT without the orthogonality constraint on ``R``."""
    return ReftConfig(orthogonality=False)


def direft() -> ReftConfig:
    """DiReFT: neither orthogonality nor subtraction (``h + Rᵀ(W h + b)``)."""
    return ReftConfig(orthogonality=False, subtract_projection=False)


REFT_PRESETS = {"loreft": loreft, "noreft": noreft, "direft": direft}
