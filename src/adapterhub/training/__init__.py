"""Training and evaluation: ``train(model, task, config)``, the paper baselines as one ``method`` flag, metrics,
results files, distributed runs and the ``train`` / ``evaluate`` / ``compare`` / ``ablate`` commands.

    from adapterhub.data import load_task
    from adapterhub.training import TrainConfig, train
    results = train(None, load_task("rotten_tomatoes"), TrainConfig(method="adapter:pfeiffer", epochs=1))
"""

from adapterhub.training.config import TrainConfig
from adapterhub.training.loop import evaluate_model, train
from adapterhub.training.methods import Method, apply_method, parse_method
from adapterhub.training.metrics import compute_metrics
from adapterhub.training.results import TrainResults

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
    "train",
]

# transformers.Trainer integration (docs/trainer.md), imported on first use: it loads the Trainer and accelerate.
_HF_TRAINER_NAMES = ("AdapterTrainer", "load_adapter_checkpoint", "save_adapter_checkpoint")


def __getattr__(name: str) -> object:
    if name in _HF_TRAINER_NAMES:
        from adapterhub.training import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module 'adapterhub.training' has no attribute {name!r}")
