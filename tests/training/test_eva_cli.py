"""``adapterhub train --method 'adapter:lora[init=eva]'`` / ``[init=corda]`` / ``[init=lora_ga]``: the init's data
pass runs over the first --init-batches (alias --eva-batches) training batches before training; the trained adapter
is saved with EVA's redistributed ranks, or CorDA's / LoRA-GA's initial factors."""

from __future__ import annotations

import pytest
import torch
import transformers

import adapterhub
from adapterhub.api.corda import CordaMixin
from adapterhub.api.eva import EvaMixin
from adapterhub.api.lora_ga import LoraGAMixin
from adapterhub.cli import main
from adapterhub.errors import ConfigError
from adapterhub.training.config import TrainConfig

FLAGS = ["--batch-size", "8", "--max-length", "16", "--no-progress", "--pooling", "mean", "--seed", "1"]


def _train(sentiment_dir, tiny_model_dir, method: str, batches_flag: str, out) -> int:
    """``adapterhub train`` of ``method`` for 2 steps, its data pass on 2 batches (``batches_flag``)."""
    argv = [
        "train",
        "--data",
        sentiment_dir,
        "--model",
        tiny_model_dir,
        "--method",
        method,
        batches_flag,
        "2",
    ]
    argv += ["--max-steps", "2", "--eval-every", "2", "--lr", "1e-2", "--output-dir", out, *FLAGS]
    return main([str(a) for a in argv])


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
    assert _train(sentiment_dir, tiny_model_dir, method, "--eva-batches", out) == 0
    assert "EVA: initialised from 2 training batches" in capsys.readouterr().err
    [(name, batches, new)] = calls
    assert (name, batches) == ("task", 2)
    assert new.target_modules and all(".layer." in m for m in new.target_modules)
    # the trained adapter is the EVA-initialised one (its rebuilt targets and ranks), saved as it is
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(tiny_model_dir)))
    [saved] = [p.parent for p in out.rglob("*.json") if '"init": "eva"' in p.read_text()]
    model.load_adapter(str(saved), load_as="loaded")
    assert model._adapterhub.adapters["loaded"].config == new


def test_init_batches_is_checked():
    with pytest.raises(ConfigError, match="init_batches"):
        TrainConfig(init_batches=0)


@pytest.mark.parametrize(
    ("init", "mixin", "label"), [("corda", CordaMixin, "CorDA"), ("lora_ga", LoraGAMixin, "LoRA-GA")]
)
def test_train_runs_the_base_modifying_passes(
    tmp_path, tiny_model_dir, sentiment_dir, capsys, monkeypatch, init, mixin, label
):
    calls = []
    original = getattr(mixin, f"initialize_{init}")

    def recording(self, name, data, **options):
        calls.append((name, len(data)))
        return original(self, name, data, **options)

    monkeypatch.setattr(mixin, f"initialize_{init}", recording)
    out = tmp_path / init
    method = f"adapter:lora[init={init},r=4,target_modules=[query,value]]"
    assert _train(sentiment_dir, tiny_model_dir, method, "--init-batches", out) == 0
    assert f"{label}: initialised from 2 training batches" in capsys.readouterr().err
    assert calls == [("task", 2)]
    # the saved adapter holds its initial factors: loaded on the original model, the base becomes the residual
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(tiny_model_dir)))
    query = model.encoder.layer[0].attention.self.query.weight.detach().clone()
    [saved] = [p.parent for p in out.rglob("*.json") if f'"init": "{init}"' in p.read_text()]
    model.load_adapter(str(saved), load_as="loaded")
    lora = model._adapterhub.adapters["loaded"].layers["0"]["q"]
    residual = query - lora.scaling * lora.initial_B @ lora.initial_A
    torch.testing.assert_close(model.encoder.layer[0].attention.self.query.weight, residual)
    assert not torch.equal(residual, query)
