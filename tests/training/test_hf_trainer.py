"""The stock transformers Trainer (via the thin AdapterTrainer) with small adapter-only checkpoints."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import TrainingArguments

import adapterhub
from adapterhub.training.hf_trainer import (
    EXTRA_FILE,
    MANIFEST_FILE,
    AdapterTrainer,
    load_adapter_checkpoint,
    save_adapter_checkpoint,
)
from tiny_models import build


class ToyData(torch.utils.data.Dataset):
    """16 rows of 6 token ids; the label is whether the first token id is even."""

    def __init__(self, n: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, 99, (n, 6), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[0] % 2}


def make_model(kind: str = "base") -> torch.nn.Module:
    model = adapterhub.init(build("bert", kind, seed=0, num_labels=2))
    model.add_adapter("task", config="pfeiffer[reduction_factor=4]")
    if kind == "base":
        model.add_classification_head("task", num_labels=2, id2label={0: "odd", 1: "even"}, dropout=0.0)
    model.train_adapter("task")
    return model


def arguments(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=5e-3,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.startswith("_adapterhub.") or k.startswith("classifier")
    }


def base_state(model) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(("_adapterhub.", "classifier"))
    }


@pytest.mark.parametrize("kind", ["base", "classification"])  # flexible head on AutoModel / built-in head
def test_checkpoints_hold_only_adapter_and_head(kind, tmp_path):
    model = make_model(kind)
    base_before = base_state(model)
    adapters_before = adapter_state(model)
    trainer = AdapterTrainer(model=model, args=arguments(tmp_path), train_dataset=ToyData())
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert "model.safetensors" not in names and "pytorch_model.bin" not in names
    assert {MANIFEST_FILE, "task", "trainer_state.json", "optimizer.pt"} <= set(names)
    assert sorted(p.name for p in (checkpoint / "task").iterdir()) == [
        "adapter.safetensors",
        "adapter_config.json",
        "head.safetensors",
        "head_config.json",
    ]
    assert not (checkpoint / EXTRA_FILE).exists()
    size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
    base_bytes = sum(v.numel() * v.element_size() for v in base_before.values())
    assert size < base_bytes / 2  # adapter + head + optimizer state, far from the base model's weights
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())  # base weights unchanged
    assert any(not torch.equal(after[k], v) for k, v in adapters_before.items())
    # the checkpoint's adapter directory is a normal adapter: it loads into a fresh model
    fresh = adapterhub.init(build("bert", kind, seed=0, num_labels=2))
    assert fresh.load_adapter(checkpoint / "task") == "task"
    if kind == "base":
        assert fresh.heads["task"].id2label == {0: "odd", 1: "even"}


def test_resume_from_checkpoint_continues_identically(tmp_path):
    full = make_model()
    AdapterTrainer(model=full, args=arguments(tmp_path / "a"), train_dataset=ToyData()).train()
    expected = adapter_state(full)

    resumed = make_model()
    trainer = AdapterTrainer(model=resumed, args=arguments(tmp_path / "b"), train_dataset=ToyData())
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert trainer.state.global_step == 4
    got = adapter_state(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-6), key


def test_load_best_model_at_end_restores_the_best_adapter(tmp_path):
    scores = iter([0.2, 0.9, 0.4, 0.1, 0.0])  # the second evaluation (step 2) is the best

    def metrics(_prediction) -> dict[str, float]:
        return {"score": next(scores)}

    model = make_model()
    args = arguments(
        tmp_path,
        eval_strategy="steps",
        eval_steps=1,
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
    )
    trainer = AdapterTrainer(
        model=model,
        args=args,
        train_dataset=ToyData(),
        eval_dataset=ToyData(8, seed=1),
        compute_metrics=metrics,
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    final = adapter_state(model)
    at_best, at_last = make_model(), make_model()
    load_adapter_checkpoint(at_best, tmp_path / "checkpoint-2")
    load_adapter_checkpoint(at_last, tmp_path / "checkpoint-4")
    assert all(torch.equal(final[k], v) for k, v in adapter_state(at_best).items())
    assert any(not torch.equal(final[k], v) for k, v in adapter_state(at_last).items())
    assert "eval_loss" in trainer.evaluate()  # label names come from the flexible head on a bare model


def test_other_trainable_tensors_go_to_the_extra_file(tmp_path):
    model = make_model()
    model.add_head("aux", "tagging", num_labels=3)
    layer_norm = model.encoder.layer[0].output.LayerNorm.weight
    layer_norm.requires_grad_(True)
    with torch.no_grad():
        layer_norm.add_(1.0)
        model.heads["aux"].layers[-1].weight.add_(1.0)
    save_adapter_checkpoint(model, tmp_path)
    other = make_model()
    other.add_head("aux", "tagging", num_labels=3)
    load_adapter_checkpoint(other, tmp_path)
    mine, theirs = model.state_dict(), other.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_model_without_the_adapter_api_is_refused(tmp_path):
    plain = build("bert", "classification")
    with pytest.raises(adapterhub.ConfigError, match=r"adapterhub\.init"):
        AdapterTrainer(model=plain, args=arguments(tmp_path), train_dataset=ToyData())


def test_gradient_accumulation_is_scaled_by_the_trainer():
    model = make_model()
    trainer_model_flag = model.accepts_loss_kwargs
    assert trainer_model_flag is False  # flexible heads average their own loss
    static = adapterhub.init(build("bert", "classification"))
    assert static.accepts_loss_kwargs == transformers.BertForSequenceClassification.__dict__.get(
        "accepts_loss_kwargs", static.accepts_loss_kwargs
    )
