"""The training loop on a tiny BERT: loss falls, early stopping, gradient accumulation, seeds, warm-up, results."""

from __future__ import annotations

import json

import pytest
import torch

from adapterhub.errors import ConfigError
from adapterhub.training import TrainConfig, train
from adapterhub.training.results import RESULTS_FILE, check_results
from adapterhub.training.schedule import linear_factor, linear_schedule, warmup_steps_for

# mean pooling and a one-layer head: the tiny random BERT's features are weak, this learns from them fastest
FAST = dict(batch_size=8, max_length=16, progress=False, head_dropout=0.0, pooling="mean", head_layers=1)


def adapter_state(model):
    return {k: v.detach().clone() for k, v in model._adapterhub.state_dict().items()}


def test_loss_falls_and_accuracy_rises(load_tiny, tiny_tokenizer, sentiment_task):
    config = TrainConfig(method="adapter:pfeiffer[reduction_factor=2]", epochs=8, learning_rate=3e-2, **FAST)
    results = train(load_tiny(), sentiment_task, config, tokenizer=tiny_tokenizer)
    losses = [row["train_loss"] for row in results.history]
    assert losses[-1] < losses[0] * 0.8
    assert results.metric_value is not None and results.metric_value >= 0.7
    assert results.status == "completed" and results.steps == 8 * 8


def test_early_stopping_triggers(load_tiny, tiny_tokenizer, sentiment_task):
    # a learning rate far too small: the metric never improves after the first evaluation
    config = TrainConfig(method="head", epochs=20, learning_rate=1e-9, patience=2, eval_every=2, **FAST)
    results = train(load_tiny(), sentiment_task, config, tokenizer=tiny_tokenizer)
    assert results.stopped_early
    assert len(results.history) == 3  # the first evaluation is the best, then two without gain
    assert results.steps == 6 and results.best_step == 2


def _one_update(load_tiny, tiny_tokenizer, task, **changes):
    settings = dict(
        method="adapter:pfeiffer[reduction_factor=2]",
        max_steps=1,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        max_grad_norm=None,
        max_length=16,
        progress=False,
        head_dropout=0.0,
        seed=3,
    )
    config = TrainConfig(**{**settings, **changes})
    model = load_tiny()
    train(model, task, config, tokenizer=tiny_tokenizer)
    return adapter_state(model)


def test_gradient_accumulation_matches_a_bigger_batch(load_tiny, tiny_tokenizer, sentiment_task):
    task = sentiment_task.subset(train=16)
    big = _one_update(load_tiny, tiny_tokenizer, task, batch_size=16, grad_accum=1)
    accumulated = _one_update(load_tiny, tiny_tokenizer, task, batch_size=4, grad_accum=4)
    start = _one_update(load_tiny, tiny_tokenizer, task, batch_size=16, learning_rate=1e-30)
    moved = sum(float((big[k] - start[k]).abs().max()) for k in big)
    assert moved > 1e-3
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-4, atol=1e-5)


def test_same_seed_gives_bit_identical_results(load_tiny, tiny_tokenizer, sentiment_task):
    config = TrainConfig(
        method="adapter:houlsby",
        epochs=2,
        seed=7,
        learning_rate=1e-3,
        batch_size=8,
        max_length=16,
        progress=False,
    )
    runs = []
    for _ in range(2):
        model = load_tiny()
        results = train(model, sentiment_task, config, tokenizer=tiny_tokenizer)
        runs.append((adapter_state(model), [row["train_loss"] for row in results.history]))
    (first, first_losses), (second, second_losses) = runs
    assert first_losses == second_losses
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = load_tiny()
    train(other, sentiment_task, config.replace(seed=8), tokenizer=tiny_tokenizer)
    assert not all(torch.equal(first[k], adapter_state(other)[k]) for k in first)


def test_warmup_then_linear_decay_values():
    assert warmup_steps_for(100, 0.1, None) == 10
    assert warmup_steps_for(100, 0.1, 5) == 5
    assert warmup_steps_for(3, 0.0, 10) == 3
    factors = [linear_factor(step, 4, 10) for step in range(10)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = linear_schedule(optimizer, 2, 4)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.05])


def test_results_file_schema_and_best_weights(tmp_path, load_tiny, tiny_tokenizer, sentiment_task):
    out = tmp_path / "run"
    config = TrainConfig(method="adapter:pfeiffer", epochs=2, output_dir=str(out), learning_rate=1e-2, **FAST)
    results = train(load_tiny(), sentiment_task, config, tokenizer=tiny_tokenizer)
    data = json.loads((out / RESULTS_FILE).read_text())
    assert check_results(data) == []
    assert data == json.loads(json.dumps(results.to_dict()))
    assert data["status"] == "completed"
    assert data["metric"]["name"] == "accuracy" and 0 <= data["metric"]["value"] <= 1
    assert set(data["dev_metrics"]) >= {"accuracy", "macro_f1", "loss"}
    assert data["trainable_parameters"] > 0 and 0 < data["percent_of_base"] < 100
    assert data["train_examples_per_second"] > 0 and data["wall_seconds"] > 0
    assert data["peak_memory_bytes"] > 0 and data["peak_memory_kind"].startswith("rss")
    assert data["saved_size_bytes"] > 0 and (out / "best" / "adapter").is_dir()
    assert (out / "best" / "training.json").is_file()
    assert data["config"]["method"] == "adapter:pfeiffer"
    assert [row["step"] for row in data["history"]] == [8, 16]


def test_a_failing_run_keeps_its_results(tmp_path, load_tiny, tiny_tokenizer, sentiment_task, monkeypatch):
    import adapterhub.training.loop as loop

    out = tmp_path / "run"
    calls = {"n": 0}
    real = loop.evaluate_model

    def evaluate_then_fail(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_model", evaluate_then_fail)
    config = TrainConfig(method="head", epochs=3, output_dir=str(out), **FAST)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(load_tiny(), sentiment_task, config, tokenizer=tiny_tokenizer)
    data = json.loads((out / RESULTS_FILE).read_text())
    assert data["status"] == "failed" and "disk on fire" in data["error"]
    assert data["best_step"] == 8 and (out / "best" / "weights.safetensors").is_file()


def test_multiple_choice_and_regression_train(task_dir, load_tiny, tiny_tokenizer):
    from adapterhub.data import load_task

    choice = load_task(task_dir("multiple_choice", train=32, dev=16))
    results = train(
        load_tiny(),
        choice,
        TrainConfig(method="adapter:pfeiffer", epochs=1, **FAST),
        tokenizer=tiny_tokenizer,
    )
    assert results.metric_name == "accuracy" and results.metric_value is not None
    regression = load_task(task_dir("regression", train=32, dev=16))
    results = train(
        load_tiny(), regression, TrainConfig(method="head", epochs=1, **FAST), tokenizer=tiny_tokenizer
    )
    assert results.metric_name == "pearson" and set(results.dev_metrics) >= {"mse", "pearson"}


def test_bad_configs_are_reported():
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="Unknown method"):
        TrainConfig(method="adaptr:pfeiffer")
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="Unknown TrainConfig field"):
        TrainConfig().replace(lr=1.0)


def test_bf16_autocast_on_cpu_when_asked(load_tiny, tiny_tokenizer, sentiment_task):
    config = TrainConfig(method="head", max_steps=2, precision="bf16", **FAST)
    results = train(load_tiny(), sentiment_task, config, tokenizer=tiny_tokenizer)
    assert results.to_dict()["environment"]["precision"] == "bf16"
    assert TrainConfig().precision == "auto"  # auto = fp32 on CPU
