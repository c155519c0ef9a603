"""``adapterhub train --method 'adapter:lora[init=eva]'``: EVA's data pass runs over the first --eva-batches
training batches before training, and the trained adapter is saved with its redistributed ranks."""

from __future__ import annotations

import pytest
import transformers

import adapterhub
from adapterhub.api.eva import EvaMixin
from adapterhub.cli import main
from adapterhub.errors import ConfigError
from adapterhub.training.config import TrainConfig

FLAGS = ["--batch-size", "8", "--max-length", "16", "--no-progress", "--pooling", "mean", "--seed", "1"]


def test_train_runs_the_eva_pass(tmp_path, tiny_model_dir, sentiment_dir, capsys, monkeypatch):
    calls = []
    original = EvaMixin.initialize_eva

    def recording(self, name, data, **options):
        new = original(self, name, data, **options)
        calls.append((name, len(data), new))
        return new

    monkeypatch.setattr(EvaMixin, "initialize_eva", recording)
    out = tmp_path / "eva"
    method = "adapter:lora[init=eva,r=4,target_modules=[query,value]]"
    argv = [
        "train",
        "--data",
        sentiment_dir,
        "--model",
        tiny_model_dir,
        "--method",
        method,
        "--eva-batches",
        "2",
    ]
    argv += ["--max-steps", "2", "--eval-every", "2", "--lr", "1e-2", "--output-dir", out, *FLAGS]
    assert main([str(a) for a in argv]) == 0
    assert "EVA: initialised from 2 training batches" in capsys.readouterr().err
    [(name, batches, new)] = calls
    assert (name, batches) == ("task", 2)
    assert new.target_modules and all(".layer." in m for m in new.target_modules)
    # the trained adapter is the EVA-initialised one (its rebuilt targets and ranks), saved as it is
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(tiny_model_dir)))
    [saved] = [p.parent for p in out.rglob("*.json") if '"init": "eva"' in p.read_text()]
    model.load_adapter(str(saved), load_as="loaded")
    assert model._adapterhub.adapters["loaded"].config == new


def test_eva_batches_is_checked():
    with pytest.raises(ConfigError, match="eva_batches"):
        TrainConfig(eva_batches=0)
