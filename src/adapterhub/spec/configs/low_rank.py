"""The LoRA config (Hu et al. 2021) and the projections (spec points) low-rank methods attach to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from adapterhub.spec.configs.base import OMIT_DEFAULT, MethodConfig
from adapterhub.spec.configs.checks import check_bool, check_choice, is_number, require
from adapterhub.spec.configs.targeting import LowRankTargeting, token_indices

LORA_INITS = ("lora", "gaussian")
LORA_BIASES = ("none", "lora_only", "all")


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(LowRankTargeting, MethodConfig):
    """LoRA (Hu et al. 2021): ``y = W x + b + s · B A dropout(x)`` on each target projection, ``s = alpha / r``
    (``use_rslora``: ``alpha / sqrt(r)``).

    ``targets``: any of ``q``, ``k``, ``v``, ``attn_out``, ``ffn_in``, ``ffn_gate`` (the gate of a gated FFN, e.g.
    Llama's ``gate_proj``), ``ffn_out`` (default ``q``, ``v``); ``init``: ``"lora"`` (A Kaiming-uniform, B zero, as
    the paper) or ``"gaussian"`` (A normal with std 1/r, B zero); ``leave_out``: layers without LoRA. Parameters:
    ``r · (d_in + d_out)`` per target and layer.

    Targeting by name instead (peft's semantics), on any ``nn.Linear`` or GPT-2 ``Conv1D`` of the model:
    ``target_modules`` (a list of names, each matching a module named so or ending in ``"." + name``; a string is
    a regex over whole names; ``"all-linear"``: every Linear/Conv1D but the output embeddings), ``exclude_modules``
    (same forms), ``layers_to_transform`` (layer indices, read from the module name, after ``layers_pattern`` when
    given), ``rank_pattern`` / ``alpha_pattern`` (``{regex: r}``: the first key, in key order, that matches the end
    of a module's name gives its rank / alpha). ``targets`` and ``leave_out`` then stay empty.

    ``modules_to_save`` (with either way of targeting): names of modules (peft's rule: every module whose path
    ends with a name) of which the adapter keeps a full trainable copy, e.g. ``["classifier"]``; the copy runs in
    place of the module while the adapter is active, the original otherwise.

    ``bias`` (peft's option): ``"none"`` (default) trains no bias; ``"lora_only"``: the adapter keeps a trainable
    copy of the bias of each module it targets; ``"all"``: of every bias of the model (every module with a ``bias``
    parameter, modules of ``modules_to_save`` left out: their copies train whole). While the adapter is active a
    held bias ``b'`` replaces the module's ``b``: ``y' = y - b + b'`` (on the module's output, after LoRA).

    ``trainable_token_indices`` (peft's option): token ids whose rows of the input embeddings train (a list), or
    ``{embedding module name: ids}``; the adapter keeps a trainable copy of those rows, which replace the
    embedding's rows while it is active (and the rows of an output head tied to that embedding).
    """

    method: ClassVar[str] = "lora"

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    use_rslora: bool = False
    init: str = "lora"
    bias: str = field(default="none", metadata={OMIT_DEFAULT: True})
    trainable_token_indices: tuple[int, ...] | tuple[tuple[str, tuple[int, ...]], ...] | None = field(
        default=None, metadata={OMIT_DEFAULT: True}
    )

    def __post_init__(self) -> None:
        require(
            isinstance(self.r, int) and not isinstance(self.r, bool) and self.r > 0,
            f"r must be a positive integer, got {self.r!r}.",
        )
        require(
            is_number(self.alpha) and self.alpha > 0, f"alpha must be a positive number, got {self.alpha!r}."
        )
        require(
            is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            f"dropout must be a number in [0, 1), got {self.dropout!r}.",
        )
        check_bool("use_rslora", self.use_rslora)
        check_choice("init", self.init, LORA_INITS)
        check_choice("bias", self.bias, LORA_BIASES)
        object.__setattr__(self, "trainable_token_indices", token_indices(self.trainable_token_indices))
        object.__setattr__(self, "alpha", float(self.alpha))
        self.check_targeting("LoRA")

    @property
    def scaling(self) -> float:
        """``s``: ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``."""
        return self.scaling_for(self.r, self.alpha)

    def scaling_for(self, r: int, alpha: float) -> float:
        """``s`` for a target of rank ``r`` and ``alpha`` (``rank_pattern`` / ``alpha_pattern``)."""
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r
