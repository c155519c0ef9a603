"""``TrainConfig``: every knob of one training run, validated on construction and written into the results file."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from adapterhub.errors import ConfigError, did_you_mean

PRECISIONS = ("auto", "fp32", "bf16")
POOLINGS = ("first", "last", "mean")
CHECKPOINTING = ("non-reentrant", "reentrant")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`adapterhub.training.train`.

    ``method`` picks what trains (see :mod:`adapterhub.training.methods`): ``full``, ``head``, ``topk:K``,
    ``layernorm`` or ``adapter:<config>``. ``learning_rate=None`` takes the method's default (2e-5 for ``full`` and
    ``topk``, 1e-3 otherwise). ``max_steps`` (optimizer updates) overrides ``epochs`` when set. ``batch_size`` is
    per process; the effective batch is ``batch_size * grad_accum * world_size``. ``patience``: stop after this
    many evaluations without improvement of ``metric`` (default: the task kind's main metric); ``eval_every``:
    evaluate every N updates (default: at the end of each epoch). ``precision="auto"`` uses bf16 autocast on a
    CUDA device that supports it and fp32 elsewhere. ``output_dir``: where the best weights and ``results.json``
    are written as training goes (``None``: nothing is written). ``group_by_length``: batches of similar-length
    rows (less padding; see :mod:`adapterhub.training.sampling`) and a longest-first dev set. ``packing``
    (generation tasks): each training batch's examples share rows of up to ``max_length`` tokens
    (:mod:`adapterhub.training.packing`); None packs where that is exact and says once when it is not (prefix
    and prompt tuning train unpacked), True packs or raises, False never packs. ``gradient_checkpointing``:
    None (off), ``"non-reentrant"`` or ``"reentrant"`` (the ``use_reentrant`` variant of
    ``torch.utils.checkpoint``): each transformer layer's activations are recomputed during the backward pass
    instead of kept (less memory, about one more forward of compute); the gradients are those without it.
    ``loss_chunk_size`` (generation tasks): the LM head and the cross-entropy run on this many loss-carrying
    positions at a time (:mod:`adapterhub.training.lm_loss`), so the (batch, seq, vocab) logits are never held;
    0 computes the full logits. The loss and gradients are the same either way. ``init_batches``: with a
    data-driven LoRA init, its data pass reads the first this many training batches before training:
    ``adapter:lora[init=eva]`` (``model.initialize_eva``, cycled until its components converge),
    ``adapter:lora[init=corda]`` (``model.initialize_corda``: each target's input covariance),
    ``adapter:lora[init=lora_ga]`` (``model.initialize_lora_ga``: each target's averaged loss gradient).
    """

    method: str = "adapter:pfeiffer"
    learning_rate: float | None = None
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 42
    patience: int | None = None
    eval_every: int | None = None
    metric: str | None = None
    precision: str = "auto"
    output_dir: str | None = None
    head_name: str = "task"
    head_layers: int = 2
    head_dropout: float = 0.1
    pooling: str | None = None  # None: mean for audio rows, first otherwise (training.modeling.head_pooling)
    restore_best: bool = True
    progress: bool = True
    group_by_length: bool = False
    train_on_prompt: bool = False
    last_turn_only: bool = False
    max_new_tokens: int | None = None
    packing: bool | None = None
    gradient_checkpointing: str | None = None
    loss_chunk_size: int = 512
    init_batches: int = 16

    def __post_init__(self) -> None:
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_batch_size", self.eval_batch_size)
        _positive_int("grad_accum", self.grad_accum)
        _positive_int("head_layers", self.head_layers)
        _positive_int("max_length", self.max_length, minimum=2)
        _positive_int("loss_chunk_size", self.loss_chunk_size, minimum=0)
        _positive_int("init_batches", self.init_batches)
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        if self.max_new_tokens is not None:
            _positive_int("max_new_tokens", self.max_new_tokens)
        if self.patience is not None:
            _positive_int("patience", self.patience)
        if self.eval_every is not None:
            _positive_int("eval_every", self.eval_every)
        if self.warmup_steps is not None:
            _positive_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.packing not in (None, True, False):
            raise ConfigError(
                f"packing must be True, False or None (pack where exact), got {self.packing!r}."
            )
        if self.gradient_checkpointing not in (None, *CHECKPOINTING):
            raise ConfigError(
                f"gradient_checkpointing={self.gradient_checkpointing!r} is not valid; use None (off) or one of "
                f"{', '.join(CHECKPOINTING)}."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}.")
        if not _finite(self.epochs) or self.epochs <= 0:
            raise ConfigError(f"epochs must be a positive number, got {self.epochs!r}.")
        if self.learning_rate is not None and (not _finite(self.learning_rate) or self.learning_rate <= 0):
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate!r}.")
        if not _finite(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}.")
        if not _finite(self.head_dropout) or not 0 <= self.head_dropout < 1:
            raise ConfigError(f"head_dropout must be in [0, 1), got {self.head_dropout!r}.")
        if self.max_grad_norm is not None and (not _finite(self.max_grad_norm) or self.max_grad_norm <= 0):
            raise ConfigError(f"max_grad_norm must be a positive number or None, got {self.max_grad_norm!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision={self.precision!r} is not valid{did_you_mean(str(self.precision), PRECISIONS)}; "
                f"use one of {', '.join(PRECISIONS)}."
            )
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ConfigError(
                f"pooling={self.pooling!r} is not valid{did_you_mean(str(self.pooling), POOLINGS)}; "
                f"use one of {', '.join(POOLINGS)}."
            )
        from adapterhub.training.methods import parse_method  # validates the method string early

        parse_method(self.method)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        unknown = [k for k in changes if k not in {f.name for f in dataclasses.fields(self)}]
        if unknown:
            names = [f.name for f in dataclasses.fields(self)]
            raise ConfigError(
                f"Unknown TrainConfig field(s) {unknown}{did_you_mean(unknown[0], names)}; valid: {', '.join(names)}."
            )
        return dataclasses.replace(self, **changes)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer of at least {minimum}, got {value!r}.")
