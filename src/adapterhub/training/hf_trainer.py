"""Train adapters with the transformers ``Trainer`` and keep checkpoints small.

    adapterhub.init(model)                      # extra line 1
    model.add_adapter("sst-2"); model.add_classification_head("sst-2", num_labels=2)
    model.train_adapter("sst-2")                # extra line 2
    trainer = AdapterTrainer(model=model, args=TrainingArguments(...), train_dataset=..., eval_dataset=...)
    trainer.train()

``AdapterTrainer`` is the stock ``transformers.Trainer`` with three methods replaced, so that every checkpoint,
``save_model()``, ``resume_from_checkpoint`` and ``load_best_model_at_end`` go through the adapters instead of the
whole model:

- ``_save`` writes :func:`save_adapter_checkpoint` (each adapter as a normal adapter directory with its head, plus
  any other trainable tensor) instead of the full model weights;
- ``_load_from_checkpoint`` and ``_load_best_model`` read it back with :func:`load_adapter_checkpoint`, copying the
  weights into the existing parameters (so the optimizer's references stay valid).

Methods that ask the training loop for more (``adapterhub.training.adapter_steps``; AdaLoRA) get it here too
(:class:`AdapterTrainingSteps`, also in trl's SFT trainer): ``compute_loss`` adds their loss terms, and a callback
tells them of each optimizer step (``on_optimizer_step``, before the gradients are zeroed; step ``global_step + 1``
of ``max_steps``).

Optimizer, scheduler, RNG and trainer state are saved by the Trainer itself, as usual (the optimizer state only
covers the trainable parameters, so it is small too). Everything else (logging, evaluation, gradient accumulation,
mixed precision, ``torchrun`` / ``accelerate launch``) is the Trainer's own code.

A plain ``Trainer`` also trains the adapters (they are ordinary parameters of the model), but its checkpoints hold
the frozen base model and no adapter, so resuming or ``load_best_model_at_end`` would not restore the adapters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.heads.static import static_head_parameters
from adapterhub.io.files import read_json, read_tensors, write_json, write_tensors
from adapterhub.training.adapter_steps import after_optimizer_step, trained_adapters, with_adapter_losses

MANIFEST_FILE = "adapterhub_checkpoint.json"
EXTRA_FILE = "adapterhub_extra.safetensors"
CHECKPOINT_FORMAT = "adapterhub.checkpoint"
STORE_PREFIX = "_adapterhub."


def _require_adapter_model(model: Any) -> Any:
    from adapterhub.api.model import STORE_ATTR

    if STORE_ATTR not in getattr(model, "_modules", {}):
        raise ConfigError(
            f"{type(model).__name__} has no adapter API; call adapterhub.init(model) (and model.train_adapter(name)) "
            "before creating the trainer."
        )
    return model


def refuse_prompt_tuning_on_own_lm_head(model: Any) -> None:
    """Raise when an active prompt-tuning adapter would train through the model's own LM head in a ``Trainer``.

    Prompt tuning puts ``P`` soft tokens in front of the sequence and a built-in LM head returns logits for all
    ``P + T`` positions, so the loss a ``Trainer`` (or trl's ``SFTTrainer``) computes against labels (batch, T)
    does not line up: transformers raises a batch-size mismatch, trl a tensor-size error. adapterhub's own loop
    (:func:`adapterhub.training.train`, ``adapterhub train --kind generation``) keeps only the last ``T``
    positions (:func:`adapterhub.training.modeling.causal_logits`), and flexible heads see only those."""
    from adapterhub.spec.composition import setup_names

    store = getattr(model, "_adapterhub", None)
    if store is None or getattr(model, "active_head", None) is not None:
        return
    getter = getattr(model, "get_output_embeddings", None)
    if not callable(getter) or getter() is None:
        return
    adapters = store.adapters
    names = [n for n in setup_names(store.current_setup()) if n in adapters]
    prompt = [n for n in names if getattr(adapters[n].config, "method", "") == "prompt_tuning"]
    if prompt:
        raise ConfigError(
            f"adapter {prompt[0]!r} is prompt tuning, whose soft tokens get logits from the model's own LM head "
            "too, so a Trainer's loss would not line up with the labels; train it with "
            "adapterhub.training.train(model, task, TrainConfig(method='adapter:prompt_tuning'), tokenizer=...) "
            "or `adapterhub train --kind generation --method adapter:prompt_tuning`, which drop those positions."
        )


def save_adapter_checkpoint(model: Any, directory: str | os.PathLike[str]) -> Path:
    """Save what training can change, and nothing else: every adapter as ``directory/<name>/`` (the layout of
    ``model.save_adapter``, head included), and in ``adapterhub_extra.safetensors`` any further tensor that
    belongs to adapterhub (other heads, fusions) or is trainable (an unfrozen LayerNorm, a full fine-tuning run)."""
    model = _require_adapter_model(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    store = model._adapterhub
    state = model.state_dict()
    covered: set[str] = set()
    static = static_head_parameters(model)
    static_keys = {name for name in state if name in static}
    for name in store.adapters:
        model.save_adapter(directory / name, name)
        covered |= {k for k in state if k.startswith(f"{STORE_PREFIX}adapters.{name}.")}
        if name in store.heads:
            covered |= {k for k in state if k.startswith(f"{STORE_PREFIX}heads.{name}.")}
        else:
            covered |= static_keys
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    wanted = {k for k in state if k.startswith(STORE_PREFIX)} | static_keys | trainable
    extra = {k: state[k].detach() for k in sorted(wanted - covered) if k in state}
    if extra:
        write_tensors(directory / EXTRA_FILE, extra)
    else:
        (directory / EXTRA_FILE).unlink(missing_ok=True)
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "adapters": list(store.adapters),
        "heads": list(store.heads),
        "extra": sorted(extra),
    }
    write_json(directory / MANIFEST_FILE, manifest)
    return directory


def is_adapter_checkpoint(directory: str | os.PathLike[str]) -> bool:
    return (Path(directory) / MANIFEST_FILE).is_file()


def load_adapter_checkpoint(model: Any, directory: str | os.PathLike[str]) -> None:
    """Restore what :func:`save_adapter_checkpoint` wrote. Adapters and heads the model already has are
    overwritten in place (same parameter objects, same ``requires_grad``); missing ones are added."""
    from adapterhub.io.adapter_dir import read_adapter_dir
    from adapterhub.runtime.core import load_exact

    model = _require_adapter_model(model)
    directory = Path(directory)
    if not is_adapter_checkpoint(directory):
        raise AdapterFileError(
            f"{directory} is not an adapterhub checkpoint (no {MANIFEST_FILE}). It was not written by "
            "AdapterTrainer; a full-model checkpoint of a plain Trainer does not hold the adapters."
        )
    manifest = read_json(directory / MANIFEST_FILE)
    store = model._adapterhub
    records = [read_adapter_dir(directory / name) for name in manifest.get("adapters", [])]
    extra = read_tensors(directory / EXTRA_FILE) if (directory / EXTRA_FILE).is_file() else {}
    state_keys = set(model.state_dict())
    unknown = sorted(k for k in extra if k not in state_keys)
    if unknown:
        raise AdapterFileError(
            f"{directory / EXTRA_FILE} holds tensors this model does not have: {unknown[:5]}. Build the model with "
            "the same adapters, heads and fusions as the run that wrote the checkpoint."
        )
    with torch.no_grad():
        for record in records:
            name = record.name
            if name in store.adapters:
                load_exact(store.adapters[name], record.tensors, f"adapter {name!r} in {directory}")
            else:
                model.add_adapter_from_record(record, with_head=False)
            head = record.head
            if head is None:
                continue
            if head.head_type == "static":
                static = static_head_parameters(model)
                for key, tensor in head.tensors.items():
                    if key not in static or tuple(static[key].shape) != tuple(tensor.shape):
                        raise AdapterFileError(
                            f"The built-in head saved in {directory / name} does not fit this model ({key})."
                        )
                    static[key].copy_(tensor.to(static[key].dtype))
            elif name in store.heads:
                load_exact(store.heads[name], head.tensors, f"head {name!r} in {directory}")
            else:
                model._prepare_head(head, name)()
        if extra:
            model.load_state_dict(extra, strict=False)


class AdapterCheckpoints:
    """The three ``transformers.Trainer`` methods that make checkpoints, ``save_model()``, resuming and
    ``load_best_model_at_end`` go through the adapters (:func:`save_adapter_checkpoint` /
    :func:`load_adapter_checkpoint`) instead of the whole model. Put it before a ``Trainer`` subclass in the bases
    (``AdapterTrainer``; trl's ``SFTTrainer`` in :mod:`adapterhub.training.trl`)."""

    args: Any
    accelerator: Any
    model: Any
    processing_class: Any
    state: Any

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        output_dir = str(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            return
        save_adapter_checkpoint(self.accelerator.unwrap_model(self.model), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_adapter_checkpoint(target, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is None:
            return
        load_adapter_checkpoint(self.accelerator.unwrap_model(self.model), best)


class AdapterSteps(TrainerCallback):
    """Tells the trained adapters of each optimizer step (``after_optimizer_step``), as adapterhub's own loop."""

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        after_optimizer_step(trained_adapters(model), state.global_step + 1, state.max_steps)


class AdapterTrainingSteps:
    """Mixin for a ``transformers.Trainer`` subclass (before the Trainer in the bases): ``compute_loss`` adds the
    trained adapters' loss terms (``with_adapter_losses``) and an :class:`AdapterSteps` callback tells them of each
    optimizer step, as adapterhub's own loop does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(AdapterSteps())  # type: ignore[attr-defined]

    def compute_loss(self, model: nn.Module, inputs: Any, return_outputs: bool = False, **kwargs: Any) -> Any:
        """The Trainer's loss plus the trained adapters' loss terms."""
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)  # type: ignore[misc]
        adapters = trained_adapters(self.accelerator.unwrap_model(model))  # type: ignore[attr-defined]
        if return_outputs:
            return with_adapter_losses(result[0], adapters), result[1]
        return with_adapter_losses(result, adapters)


class AdapterTrainer(AdapterCheckpoints, AdapterTrainingSteps, Trainer):
    """``transformers.Trainer`` whose checkpoints hold only adapters and heads (see the module docstring).

    If ``args.label_names`` is not given, the label names are taken from the active flexible head (for example
    ``start_positions``/``end_positions`` of a QA head), which also makes evaluation report ``eval_loss`` on a bare
    ``AutoModel``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model = _require_adapter_model(self.model)
        refuse_prompt_tuning_on_own_lm_head(model)
        if self.args.label_names is None:
            head_name = model.active_head
            if head_name is not None:
                self.label_names = list(model.heads[head_name].label_names)
