"""Training and evaluation: ``train(model, task, config)``, the paper baselines as one ``method`` flag, metrics,
results files, distributed runs and the ``train`` / ``evaluate`` / ``compare`` / ``ablate`` commands. The training
layer builds on api and data (and everything below them); serving, export and cli never come into it.

    from adapterhub.data import load_task
    from adapterhub.training import TrainConfig, train
    results = train(None, load_task("rotten_tomatoes"), TrainConfig(method="adapter:pfeiffer", epochs=1))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from adapterhub.training.config import TrainConfig
from adapterhub.training.results import TrainResults

if TYPE_CHECKING:
    from adapterhub.training.evaluation import evaluate_model
    from adapterhub.training.hf_trainer import (
        AdapterTrainer,
        load_adapter_checkpoint,
        save_adapter_checkpoint,
    )
    from adapterhub.training.loop import train
    from adapterhub.training.methods import Method, apply_method, parse_method
    from adapterhub.training.metrics import compute_metrics
    from adapterhub.training.trl import sft_trainer

__all__ = [
    "AdapterTrainer",
    "Method",
    "TrainConfig",
    "TrainResults",
    "apply_method",
    "compute_metrics",
    "evaluate_model",
    "load_adapter_checkpoint",
    "parse_method",
    "save_adapter_checkpoint",
    "sft_trainer",
    "train",
]

# name -> module, imported on first use: these load torch (and the transformers.Trainer integration, docs/trainer.md,
# loads the Trainer and accelerate), so that the ``train`` / ``evaluate`` commands' ``--help`` stays light.
_LAZY = {
    "AdapterTrainer": "adapterhub.training.hf_trainer",
    "load_adapter_checkpoint": "adapterhub.training.hf_trainer",
    "save_adapter_checkpoint": "adapterhub.training.hf_trainer",
    "evaluate_model": "adapterhub.training.evaluation",
    "train": "adapterhub.training.loop",
    "Method": "adapterhub.training.methods",
    "apply_method": "adapterhub.training.methods",
    "parse_method": "adapterhub.training.methods",
    "compute_metrics": "adapterhub.training.metrics",
    "sft_trainer": "adapterhub.training.trl",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterhub.training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
