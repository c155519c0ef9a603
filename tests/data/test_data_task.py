"""Example and TaskData: coercion, properties, validation and seeded subsets."""

from __future__ import annotations

import dataclasses

import pytest

from adapterhub.data import Example, TaskData
from adapterhub.errors import ConfigError


def _task(n_train: int = 50, n_dev: int = 10) -> TaskData:
    return TaskData(
        name="toy",
        kind="classification",
        labels=("negative", "positive"),
        train=tuple(Example(f"train {i}", label=i % 2) for i in range(n_train)),
        dev=tuple(Example(f"dev {i}", label=i % 2) for i in range(n_dev)),
    )


def test_example_is_frozen_and_coerces_lists() -> None:
    example = Example("q", choices=["a", "b"], label=[0, 1])  # type: ignore[arg-type]
    assert example.choices == ("a", "b")
    assert example.label == (0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        example.text = "other"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="must be a string"):
        Example(3)  # type: ignore[arg-type]


def test_label_maps_and_num_labels() -> None:
    task = _task()
    assert task.id2label == {0: "negative", 1: "positive"}
    assert task.label2id == {"negative": 0, "positive": 1}
    assert task.num_labels == 2
    regression = TaskData("r", "regression", (), (Example("x", label=0.5),), ())
    assert regression.num_labels == 1 and regression.id2label == {} and regression.label2id == {}


def test_repr_summarises_instead_of_listing_examples() -> None:
    assert repr(_task()) == (
        "TaskData(name='toy', kind='classification', labels=('negative', 'positive'), "
        "train=<50 examples>, dev=<10 examples>)"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "sentiment", "labels": ("a",)}, "unknown task kind 'sentiment'"),
        ({"kind": "classification", "labels": ("a", "a")}, "must be unique"),
        ({"kind": "regression", "labels": ("a",)}, "no label names"),
        ({"kind": "classification", "labels": ()}, "at least one label"),
        (
            {"kind": "classification", "labels": ("a",), "train": (Example("x", label=3),)},
            "not an index in 0..0",
        ),
        ({"kind": "regression", "labels": (), "train": (Example("x", label=1),)}, "not a float"),
        ({"kind": "multilabel", "labels": ("a", "b"), "dev": (Example("x", label=(0, 2)),)}, "dev example 0"),
        (
            {
                "kind": "multiple_choice",
                "labels": ("0", "1"),
                "train": (Example("x", None, ("a", "b", "c"), 0),),
            },
            "1 to 2 choices",
        ),
        (
            {
                "kind": "multiple_choice",
                "labels": ("0", "1", "2"),
                "train": (Example("x", None, ("a", "b"), 2),),
            },
            "one per choice",
        ),
    ],
)
def test_taskdata_rejects_inconsistent_content(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TaskData(name="bad", **kwargs)


def test_multiple_choice_rows_may_have_fewer_choices_than_labels() -> None:
    task = TaskData("mc", "multiple_choice", ("0", "1", "2"), (Example("q", None, ("a", "b"), 1),), ())
    assert task.num_labels == 3


def test_subset_is_seeded_ordered_and_clipped() -> None:
    task = _task()
    small = task.subset(train=8, dev=3, seed=1)
    assert (len(small.train), len(small.dev)) == (8, 3)
    assert small == task.subset(train=8, dev=3, seed=1)
    assert small.train != task.subset(train=8, dev=3, seed=2).train
    positions = [task.train.index(example) for example in small.train]
    assert positions == sorted(positions)
    assert small.labels == task.labels and small.kind == task.kind
    whole = task.subset(train=None, dev=1000)
    assert whole.train == task.train and whole.dev == task.dev
    with pytest.raises(ConfigError, match="non-negative integer"):
        task.subset(train=-1)
