"""AdaLoRA through ``adapterhub train``: the loop adds the orthogonal regulariser and calls the rank allocator after
each optimizer step (``total_step`` from the run's step count), so the saved adapter has its final
``rank_pattern`` (``target_r`` per target on average) with the dropped singular values zero; and the loop's hooks
are asked through the method protocol (a method without them trains as before)."""

from __future__ import annotations

import json

import torch
import transformers

import adapterhub
from adapterhub.cli import main
from adapterhub.training.adapter_steps import after_optimizer_step, trained_adapters, with_adapter_losses
from tiny_models import build

TINY_FLAGS = ["--batch-size", "8", "--max-length", "16", "--no-progress", "--pooling", "mean"]


def test_train_adalora_allocates_ranks_and_saves_the_pattern(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    out = tmp_path / "run"
    method = "adapter:adalora[init_r=4,target_r=2,tinit=1,tfinal=1,orth_reg_weight=0.1]"
    # one evaluation, at the last step (the best weights are then the final ones, after the final masking at 5)
    argv = ["train", "--data", sentiment_dir, "--model", tiny_model_dir, "--method", method]
    argv += ["--max-steps", "6", "--eval-every", "6"]
    argv += ["--lr", "1e-2", "--seed", "1", "--output-dir", out, *TINY_FLAGS]
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"] == 6
    model = adapterhub.init(transformers.AutoModel.from_pretrained(tiny_model_dir))
    name = model.load_adapter(out / "best" / "adapter", set_active=True)
    adapter = model._adapterhub.adapters[name]
    pattern = dict(adapter.config.rank_pattern)
    assert adapter.config.total_step == 6  # the run's step count, kept with the adapter
    assert set(pattern) == set(adapter.sites()) and len(pattern) == 4  # q, v of 2 layers
    kept = sum(sum(mask) for mask in pattern.values())
    assert kept == 2 * len(pattern)  # the target budget: target_r per target on average
    for key, site in adapter.sites().items():
        dropped = ~torch.tensor(pattern[key])
        assert torch.all(site.lora_E[dropped] == 0)
    assert any(torch.any(site.lora_E != 0) for site in adapter.sites().values())


def test_loop_hooks_ask_only_trained_adapters_through_the_protocol():
    model = adapterhub.init(build("bert"))
    model.add_adapter("lora", config="lora[r=2]")
    model.add_adapter("ada", config="adalora[init_r=2,target_r=1,total_step=4]")
    model.train_adapter("lora")
    adapters = trained_adapters(model)
    assert [a.adapter_name for a in adapters] == ["lora"]
    loss = torch.tensor(1.5)
    assert with_adapter_losses(loss, adapters) is loss  # LoRA adds no term
    after_optimizer_step(adapters, 1, 4)  # and does nothing after a step
    model.train_adapter("ada")
    adapters = trained_adapters(model)
    assert [a.adapter_name for a in adapters] == ["ada"]
    total = with_adapter_losses(loss, adapters)
    assert total.requires_grad and float(total.detach()) > 1.5
    assert trained_adapters(build("bert")) == []


def test_adapter_trainer_adds_the_regulariser_and_allocates(tmp_path):
    from adapterhub.training.hf_trainer import AdapterTrainer

    ids = torch.randint(3, 99, (16, 6), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": i[0] % 2} for i in ids]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        max_steps=4,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    model = adapterhub.init(build("bert", "classification", seed=0, num_labels=2))
    model.add_adapter("task", config="adalora[init_r=3,target_r=1,tfinal=1,orth_reg_weight=0.2]")
    model.train_adapter("task")
    adapter = model._adapterhub.adapters["task"]
    trainer = AdapterTrainer(model=model, args=args, train_dataset=data)
    rows = {k: v.view(1, -1) for k, v in data[0].items()}
    rows["labels"] = rows["labels"].view(1)
    model.eval()  # no dropout: the two losses see the same forward
    with torch.no_grad():
        task_loss = model(**rows).loss
        expected = task_loss + adapter.training_loss()
        torch.testing.assert_close(trainer.compute_loss(model, rows), expected)
    trainer.train()
    pattern = dict(adapter.config.rank_pattern)
    assert sum(sum(mask) for mask in pattern.values()) == len(pattern)  # target_r=1 per target
    for key, site in adapter.sites().items():
        assert torch.all(site.lora_E[~torch.tensor(pattern[key])] == 0)
