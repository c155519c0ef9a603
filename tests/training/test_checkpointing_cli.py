"""``adapterhub train --gradient-checkpointing``: the layers are checkpointed and the run is the run without it."""

from __future__ import annotations

import json

import pytest
import torch.utils.checkpoint
import transformers.modeling_utils

from adapterhub.cli import main
from adapterhub.errors import ConfigError
from adapterhub.training.config import TrainConfig

TINY_FLAGS = ["--batch-size", "8", "--max-length", "16", "--no-progress", "--pooling", "mean"]


def _train(tmp_path, tiny_model_dir, sentiment_dir, name, *flags):
    out = tmp_path / name
    argv = ["train", "--data", sentiment_dir, "--model", tiny_model_dir, "--method", "adapter:lora"]
    argv += ["--max-steps", "3", "--eval-every", "3", "--lr", "1e-2", "--seed", "1", "--output-dir", out]
    code = main([str(a) for a in [*argv, *TINY_FLAGS, *flags]])
    assert code == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("flags", [["--gradient-checkpointing"], ["--gradient-checkpointing", "reentrant"]])
def test_train_with_gradient_checkpointing_matches_without(
    flags, tmp_path, tiny_model_dir, sentiment_dir, monkeypatch
):
    calls = []

    def counting(function, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting)
    plain = _train(tmp_path, tiny_model_dir, sentiment_dir, "plain")
    assert not calls
    checkpointed = _train(tmp_path, tiny_model_dir, sentiment_dir, "ckpt", *flags)
    assert calls and set(calls) == {flags[-1] == "reentrant"}  # every layer of every step, in that variant
    assert checkpointed["config"]["gradient_checkpointing"] == (
        "reentrant" if flags[-1] == "reentrant" else "non-reentrant"
    )
    losses = [[row.get("train_loss") for row in run["history"]] for run in (plain, checkpointed)]
    assert losses[0] and any(loss is not None for loss in losses[0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_gradient_checkpointing_value_is_checked():
    with pytest.raises(ConfigError, match="reentrant"):
        TrainConfig(gradient_checkpointing="yes")
