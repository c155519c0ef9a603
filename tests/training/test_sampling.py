"""Length-grouped batching (adapterhub.training.sampling) and its use by the training loop."""

from __future__ import annotations

import random

import pytest
import torch

from adapterhub.data import EncodedDataset, encode
from adapterhub.errors import ConfigError
from adapterhub.training import TrainConfig, train
from adapterhub.training.distributed import DistInfo
from adapterhub.training.loop import evaluate_model, make_loader
from adapterhub.training.sampling import LengthGroupedSampler, example_lengths, length_sorted_indices


def _dataset(n: int = 300, seed: int = 0) -> EncodedDataset:
    rng = random.Random(seed)
    features = []
    for i in range(n):
        length = rng.randint(2, 60)
        features.append({"input_ids": [1] * length, "attention_mask": [1] * length, "labels": i % 2})
    return EncodedDataset(features, "classification")


def _padded_tokens(loader) -> int:
    return sum(int(batch["input_ids"].numel()) for batch in loader)


def test_every_example_once_and_longest_first_within_each_mega_batch():
    lengths = example_lengths(_dataset())
    sampler = LengthGroupedSampler(lengths, 4, generator=torch.Generator().manual_seed(0), mega_batches=5)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    for start in range(0, len(order), 20):
        chunk = [lengths[i] for i in order[start : start + 20]]
        assert chunk == sorted(chunk, reverse=True)
    again = LengthGroupedSampler(lengths, 4, generator=torch.Generator().manual_seed(0), mega_batches=5)
    other = LengthGroupedSampler(lengths, 4, generator=torch.Generator().manual_seed(1), mega_batches=5)
    assert list(again) == order and list(other) != order


def test_grouped_batches_pad_less_and_hold_the_same_rows(tiny_tokenizer):
    data = _dataset()
    plain = make_loader(data, tiny_tokenizer, 8, shuffle=True, seed=0)
    grouped = make_loader(data, tiny_tokenizer, 8, shuffle=True, seed=0, group_by_length=True)
    assert _padded_tokens(grouped) < 0.75 * _padded_tokens(plain)

    def rows(loader):
        return sorted(
            int(batch["attention_mask"][i].sum()) for batch in loader for i in range(len(batch["labels"]))
        )

    assert rows(grouped) == rows(plain)


def test_dev_order_is_longest_first():
    data = _dataset(50)
    lengths = example_lengths(data)
    assert [lengths[i] for i in length_sorted_indices(data)] == sorted(lengths, reverse=True)


def test_multiple_choice_length_is_the_longest_choice():
    data = EncodedDataset(
        [{"input_ids": [[1] * 3, [1] * 7], "attention_mask": [[1] * 3, [1] * 7], "labels": 0}],
        "multiple_choice",
    )
    assert example_lengths(data) == [7]


def test_refused_under_distributed_training(tiny_tokenizer):
    with pytest.raises(ConfigError, match="distributed"):
        make_loader(
            _dataset(10),
            tiny_tokenizer,
            4,
            shuffle=True,
            seed=0,
            info=DistInfo(world_size=2),
            group_by_length=True,
        )
    with pytest.raises(ConfigError, match="at least 1"):
        LengthGroupedSampler([1, 2], 0)


def test_sorted_dev_set_gives_the_same_metrics(load_tiny, tiny_tokenizer, sentiment_task):
    import adapterhub
    from adapterhub.training.modeling import HeadSettings, add_task_head

    model = adapterhub.init(load_tiny())
    add_task_head(model, sentiment_task.kind, sentiment_task.labels, "task", HeadSettings(pooling="mean"))
    model.active_head = "task"
    data = encode(sentiment_task.dev, tiny_tokenizer, kind=sentiment_task.kind, max_length=16, num_labels=2)
    plain = evaluate_model(
        model, make_loader(data, tiny_tokenizer, 3, shuffle=False, seed=0), "classification"
    )
    grouped = evaluate_model(
        model,
        make_loader(data, tiny_tokenizer, 3, shuffle=False, seed=0, group_by_length=True),
        "classification",
    )
    assert grouped.keys() == plain.keys()
    for key in plain:
        assert grouped[key] == pytest.approx(plain[key], abs=1e-5)


def test_training_with_grouped_batches_learns_and_records_times(load_tiny, tiny_tokenizer, sentiment_task):
    config = TrainConfig(
        method="adapter:pfeiffer[reduction_factor=2]",
        epochs=4,
        learning_rate=3e-2,
        batch_size=8,
        max_length=16,
        progress=False,
        head_dropout=0.0,
        pooling="mean",
        head_layers=1,
        group_by_length=True,
    )
    results = train(load_tiny(), sentiment_task, config, tokenizer=tiny_tokenizer)
    assert results.status == "completed" and results.config["group_by_length"] is True
    losses = [row["train_loss"] for row in results.history]
    assert losses[-1] < losses[0]
    times = [row["time"] for row in results.history]
    assert times == sorted(times) and len(times) == 4
