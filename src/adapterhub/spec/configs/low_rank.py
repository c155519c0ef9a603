"""The LoRA config (Hu et al. 2021) and the projections (spec points) low-rank methods attach to."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

from adapterhub.spec.configs.base import OMIT_DEFAULT, MethodConfig
from adapterhub.spec.configs.checks import check_bool, check_choice, is_number, require
from adapterhub.spec.configs.data_inits import CordaConfig, LoraGAConfig
from adapterhub.spec.configs.eva import EvaConfig
from adapterhub.spec.configs.targeting import LowRankTargeting, token_indices

LORA_INITS = (
    "lora",
    "gaussian",
    "pissa",
    "pissa_niter_K",
    "olora",
    "orthogonal",
    "loftq",
    "eva",
    "corda",
    "lora_ga",
)
# initialisations that replace the base weight of each target (W -> W - s B A, or LoftQ's dequant(quant(W)))
BASE_INITS = ("pissa", "olora", "loftq", "corda", "lora_ga")
# initialisations computed from data after add_adapter: init -> the model method that runs the data pass
DATA_INITS = {"eva": "initialize_eva", "corda": "initialize_corda", "lora_ga": "initialize_lora_ga"}
PISSA_NITER = re.compile(r"^pissa_niter_([1-9][0-9]*)$")
_NOT_YET = {
    "mica": "MiCA freezes lora_B during training, which adapterhub's LoRA has no option for",
}


def modifies_base(init: str) -> bool:
    """Whether LoRA initialisation ``init`` replaces the base weight of each target (PiSSA, OLoRA, LoftQ, CorDA,
    LoRA-GA)."""
    return init in BASE_INITS or PISSA_NITER.match(init) is not None


def keeps_initial_factors(init: str) -> bool:
    """Whether ``init``'s residual base is ``W - s B0 A0`` (its initial factors ``A0``, ``B0`` kept and saved: PiSSA,
    OLoRA, CorDA, LoRA-GA), so that it converts to a plain LoRA on the original weights."""
    return modifies_base(init) and init != "loftq"


LORA_BIASES = ("none", "lora_only", "all")


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(LowRankTargeting, MethodConfig):
    """LoRA (Hu et al. 2021): ``y = W x + b + s · B A dropout(x)`` on each target projection, ``s = alpha / r``
    (``use_rslora``: ``alpha / sqrt(r)``).

    ``targets``: any of ``q``, ``k``, ``v``, ``attn_out``, ``ffn_in``, ``ffn_gate`` (the gate of a gated FFN, e.g.
    Llama's ``gate_proj``), ``ffn_out`` (default ``q``, ``v``); ``init``: ``"lora"`` (A Kaiming-uniform, B zero, as
    the paper), ``"gaussian"`` (A normal with std 1/r, B zero), ``"orthogonal"`` (B A = 0), or one that replaces
    each target's base weight: ``"pissa"`` / ``"pissa_niter_K"`` (SVD), ``"olora"`` (QR), ``"loftq"`` (with
    ``loftq_bits`` 4 / 8 and ``loftq_iter``), or ``"eva"`` (``A`` from the SVD of each target's inputs over data,
    ranks redistributed: ``eva_config``, peft's ``EvaConfig`` keys, and ``model.initialize_eva`` before use), or
    ``"corda"`` (``A``, ``B`` from the SVD of ``W C``, ``C`` the covariance of each target's inputs over data, the
    base the residual: ``corda_config``, peft's ``CordaConfig`` keys, and ``model.initialize_corda`` before use), or
    ``"lora_ga"`` (``A``, ``B`` from the SVD of each target's weight gradient averaged over batches, the base the
    residual: ``lora_ga_config``, peft's ``LoraGAConfig`` keys, and ``model.initialize_lora_ga`` before use); the
    math is in ``adapterhub.methods.lora_init`` / ``eva`` / ``corda`` / ``lora_ga``, the rules in docs/methods.md ("Initialisations"); ``leave_out``: layers without LoRA. Parameters:
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
    loftq_bits: int = field(default=4, metadata={OMIT_DEFAULT: True})
    loftq_iter: int = field(default=1, metadata={OMIT_DEFAULT: True})
    eva_config: tuple[tuple[str, object], ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    corda_config: tuple[tuple[str, object], ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    lora_ga_config: tuple[tuple[str, object], ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
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
        self._check_init()
        check_choice("bias", self.bias, LORA_BIASES)
        object.__setattr__(self, "trainable_token_indices", token_indices(self.trainable_token_indices))
        object.__setattr__(self, "alpha", float(self.alpha))
        self.check_targeting("LoRA")

    def _check_init(self) -> None:
        init = self.init
        require(
            not isinstance(init, str) or init not in _NOT_YET,
            f"init={init!r} is not implemented yet: {_NOT_YET.get(str(init))}.",
        )
        if not (isinstance(init, str) and PISSA_NITER.match(init)):
            check_choice("init", init, LORA_INITS)
        require(
            self.method == "lora" or init in ("lora", "gaussian"),
            f"init={init!r} is implemented for method 'lora' only; {self.method} takes init 'lora' or 'gaussian'.",
        )
        require(
            self.loftq_bits in (4, 8) and not isinstance(self.loftq_bits, bool),
            f"loftq_bits must be 4 (NF4) or 8 (int8), got {self.loftq_bits!r}.",
        )
        require(
            isinstance(self.loftq_iter, int)
            and not isinstance(self.loftq_iter, bool)
            and self.loftq_iter > 0,
            f"loftq_iter must be a positive integer, got {self.loftq_iter!r}.",
        )
        require(
            init == "loftq" or (self.loftq_bits, self.loftq_iter) == (4, 1),
            f"loftq_bits / loftq_iter apply to init='loftq' only (init is {init!r}).",
        )
        require(
            init != "orthogonal" or self.r % 2 == 0,
            f"init='orthogonal' needs an even r (half the rows of an orthogonal matrix go to A, half to B), got "
            f"r={self.r}.",
        )
        if init == "eva":
            object.__setattr__(self, "eva_config", EvaConfig.from_value(self.eva_config).pairs())
        require(
            self.eva_config is None or init == "eva",
            f"eva_config applies to init='eva' only (init is {init!r}).",
        )
        if init == "corda":
            object.__setattr__(self, "corda_config", CordaConfig.from_value(self.corda_config).pairs())
        require(
            self.corda_config is None or init == "corda",
            f"corda_config applies to init='corda' only (init is {init!r}).",
        )
        if init == "lora_ga":
            object.__setattr__(self, "lora_ga_config", LoraGAConfig.from_value(self.lora_ga_config).pairs())
        require(
            self.lora_ga_config is None or init == "lora_ga",
            f"lora_ga_config applies to init='lora_ga' only (init is {init!r}).",
        )

    @property
    def modifies_base(self) -> bool:
        """Whether ``init`` replaces each target's base weight (PiSSA, OLoRA, LoftQ, CorDA, LoRA-GA: docs/methods.md)."""
        return modifies_base(self.init)

    @property
    def eva(self) -> EvaConfig:
        """The EVA options (``init="eva"``; the defaults otherwise)."""
        return EvaConfig.from_value(self.eva_config)

    @property
    def corda(self) -> CordaConfig:
        """The CorDA options (``init="corda"``; the defaults otherwise)."""
        return CordaConfig.from_value(self.corda_config)

    @property
    def lora_ga(self) -> LoraGAConfig:
        """The LoRA-GA options (``init="lora_ga"``; the defaults otherwise)."""
        return LoraGAConfig.from_value(self.lora_ga_config)

    @property
    def scaling(self) -> float:
        """``s``: ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``."""
        return self.scaling_for(self.r, self.alpha)

    def scaling_for(self, r: int, alpha: float) -> float:
        """``s`` for a target of rank ``r`` and ``alpha`` (``rank_pattern`` / ``alpha_pattern``)."""
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r
