"""Supervised fine-tuning of adapters with trl's ``SFTTrainer`` (the ``trl`` extra: ``pip install adapterhub[trl]``).

    adapterhub.init(model); model.add_adapter("sft", config="lora"); model.train_adapter("sft")
    trainer = sft_trainer(model, args=SFTConfig(...), train_dataset=chat_rows, processing_class=tokenizer)
    trainer.train()
    trainer.save_model("out")            # out/sft/ is an adapter directory: model.load_adapter("out/sft")

What ``SFTTrainer`` (trl 1.16) does with the model, and why the stock trainer already trains our adapters: it calls
the model's ``forward`` (with ``fused_lm_head=True``: log-probabilities from the final hidden states and the LM
head's weight, so adapters in the layers count and an adapter on the LM head itself would not), enables
activation checkpointing through ``gradient_checkpointing_enable`` (on by default in ``SFTConfig``; adapterhub
keeps each layer's recompute under the call's adapter setup, ``adapterhub.runtime.checkpointing``), and trains
the parameters with ``requires_grad`` (``train_adapter`` leaves only the adapter's). Its peft code paths run only
for a ``peft.PeftModel`` or a ``peft_config``, so they stay off.

What it would do wrong: ``save_model()`` and every checkpoint call ``model.save_pretrained``, which writes the
frozen base model and no adapter. The trainer built here is ``SFTTrainer`` with adapterhub's
:class:`~adapterhub.training.hf_trainer.AdapterCheckpoints`: ``save_model(dir)`` and checkpoints write
:func:`~adapterhub.training.hf_trainer.save_adapter_checkpoint` (``dir/<adapter>/`` per adapter, the directory
``model.load_adapter`` reads, plus the tokenizer), and resuming / ``load_best_model_at_end`` read them back; with
:class:`~adapterhub.training.hf_trainer.AdapterTrainingSteps` the adapters' loss terms and per-step calls (AdaLoRA)
run as in adapterhub's own loop.

trl is imported when :func:`sft_trainer` is called, never on ``import adapterhub``.
"""

from __future__ import annotations

from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.training.hf_trainer import (
    AdapterCheckpoints,
    AdapterTrainingSteps,
    _require_adapter_model,
    refuse_prompt_tuning_on_own_lm_head,
)

_CLASSES: dict[type, type] = {}


def _sft_trainer_class() -> type:
    try:
        from trl import SFTTrainer
    except ImportError as error:
        raise ImportError(
            "adapterhub.training.trl needs trl; install it with `pip install adapterhub[trl]`."
        ) from error
    if SFTTrainer not in _CLASSES:
        _CLASSES[SFTTrainer] = type(
            "AdapterSFTTrainer",
            (AdapterCheckpoints, AdapterTrainingSteps, SFTTrainer),
            {"__module__": __name__, "__doc__": "trl's SFTTrainer whose checkpoints hold only the adapters."},
        )
    return _CLASSES[SFTTrainer]


def sft_trainer(model: Any, **kwargs: Any) -> Any:
    """A trl ``SFTTrainer`` for ``model`` (an ``adapterhub.init`` causal LM with its adapter set to train) whose
    ``save_model`` / checkpoints write adapter directories (see the module docstring). ``kwargs`` go to
    ``SFTTrainer`` unchanged (``args``, ``train_dataset``, ``eval_dataset``, ``processing_class``, ...).

    Contract: the model is trained in place; nothing but the parameters with ``requires_grad`` changes (after
    ``model.train_adapter(name)``: that adapter). Raises ``ConfigError`` for a model without the adapter API, a
    model with nothing to train, an active prompt-tuning adapter (its soft tokens' logits would not line up with
    the labels: :func:`~adapterhub.training.hf_trainer.refuse_prompt_tuning_on_own_lm_head`), and a ``peft_config`` (adapterhub trains its own adapters: add one with
    ``model.add_adapter``); ``ImportError`` naming ``pip install adapterhub[trl]`` without trl."""
    model = _require_adapter_model(model)
    if kwargs.get("peft_config") is not None:
        raise ConfigError(
            "sft_trainer trains adapterhub adapters, not peft ones: leave peft_config out and add the adapter with "
            "model.add_adapter(name, config=...) and model.train_adapter(name) (peft's LoraConfig maps to "
            "config='lora')."
        )
    if not any(param.requires_grad for param in model.parameters()):
        raise ConfigError("The model has no trainable parameter: call model.train_adapter(name) first.")
    refuse_prompt_tuning_on_own_lm_head(model)
    return _sft_trainer_class()(model=model, **kwargs)
