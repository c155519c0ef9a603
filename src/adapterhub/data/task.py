"""The two value types every loader returns: :class:`Example` (one labelled row) and :class:`TaskData` (a task)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, get_args

from adapterhub.errors import ConfigError, did_you_mean

TaskKind = Literal["classification", "regression", "multilabel", "multiple_choice"]
KINDS: tuple[str, ...] = get_args(TaskKind)

Label = int | float | tuple[int, ...]


def check_kind(kind: str) -> TaskKind:
    """Return ``kind`` unchanged if it is one of :data:`KINDS`, else raise :class:`ConfigError`."""
    if kind not in KINDS:
        raise ConfigError(
            f"unknown task kind {kind!r}{did_you_mean(str(kind), KINDS)}; use one of: {', '.join(KINDS)}"
        )
    return kind  # type: ignore[return-value]


@dataclass(frozen=True)
class Example:
    """One row of a task.

    ``label`` is already mapped: the class index for classification, the right choice's index for multiple
    choice, a float for regression, a sorted tuple of class indices for multilabel, or ``None`` when unlabelled.
    Lists given for ``choices`` or a multilabel ``label`` are stored as tuples.
    """

    text: str
    text_pair: str | None = None
    choices: tuple[str, ...] | None = None
    label: Label | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ConfigError(f"Example.text must be a string, got {type(self.text).__name__}")
        if self.choices is not None and not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", tuple(self.choices))
        if isinstance(self.label, list):
            object.__setattr__(self, "label", tuple(self.label))


@dataclass(frozen=True, repr=False)
class TaskData:
    """A task: its kind, its label names and its train / dev examples.

    ``labels`` lists label names in index order (``labels[i]`` is the name of index ``i``): class names for
    classification and multilabel, ``("0", "1", ...)`` (one per choice, as many as the row with the most
    choices; a row may have fewer) for multiple choice, and ``()`` for regression. Construction checks that every example's label fits ``kind`` and ``labels``.
    """

    name: str
    kind: TaskKind
    labels: tuple[str, ...]
    train: tuple[Example, ...] = field(default=())
    dev: tuple[Example, ...] = field(default=())

    def __post_init__(self) -> None:
        check_kind(self.kind)
        for attr in ("labels", "train", "dev"):
            value = getattr(self, attr)
            if not isinstance(value, tuple):
                object.__setattr__(self, attr, tuple(value))
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"task {self.name!r}: label names must be unique, got {self.labels}")
        if self.kind == "regression" and self.labels:
            raise ConfigError(f"task {self.name!r}: a regression task has no label names, got {self.labels}")
        if self.kind != "regression" and not self.labels:
            raise ConfigError(f"task {self.name!r}: a {self.kind} task needs at least one label name")
        for split in ("train", "dev"):
            for index, example in enumerate(getattr(self, split)):
                problem = self._label_problem(example)
                if problem:
                    raise ConfigError(f"task {self.name!r}, {split} example {index}: {problem}")

    def _label_problem(self, example: Example) -> str | None:
        label = example.label
        if label is None:
            return None
        n = len(self.labels)
        if self.kind == "regression":
            ok = isinstance(label, float)
            expected = "a float"
        elif self.kind == "multilabel":
            ok = isinstance(label, tuple) and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in label
            )
            expected = f"a tuple of indices in 0..{n - 1}"
        else:
            ok = isinstance(label, int) and not isinstance(label, bool) and 0 <= label < n
            expected = f"an index in 0..{n - 1}"
        if self.kind == "multiple_choice":
            if not example.choices or len(example.choices) > n:
                return f"a multiple-choice example needs 1 to {n} choices, got {example.choices!r}"
            ok = ok and label < len(example.choices)  # type: ignore[operator]
            expected = f"an index in 0..{len(example.choices) - 1} (one per choice)"
        return None if ok else f"label {label!r} is not {expected} for a {self.kind} task"

    @property
    def id2label(self) -> dict[int, str]:
        """Index -> label name (empty for regression)."""
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        """Label name -> index (empty for regression)."""
        return {name: index for index, name in enumerate(self.labels)}

    @property
    def num_labels(self) -> int:
        """Output width of a head for this task: 1 for regression, else ``len(labels)`` (choices for MC)."""
        return 1 if self.kind == "regression" else len(self.labels)

    def subset(self, train: int | None = None, dev: int | None = None, seed: int = 0) -> TaskData:
        """A copy holding a seeded random sample of ``train`` training and ``dev`` dev examples.

        ``None`` keeps a split whole, and so does a count at least as large as the split. The sample keeps the
        examples' original order, and the same ``seed`` always picks the same examples.
        """
        return TaskData(
            name=self.name,
            kind=self.kind,
            labels=self.labels,
            train=_sample(self.train, train, random.Random(f"{seed}:train"), "train"),
            dev=_sample(self.dev, dev, random.Random(f"{seed}:dev"), "dev"),
        )

    def __repr__(self) -> str:
        return (
            f"TaskData(name={self.name!r}, kind={self.kind!r}, labels={self.labels!r}, "
            f"train=<{len(self.train)} examples>, dev=<{len(self.dev)} examples>)"
        )


def _sample(
    examples: tuple[Example, ...], count: int | None, rng: random.Random, split: str
) -> tuple[Example, ...]:
    if count is None:
        return examples
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"subset({split}=...) must be a non-negative integer or None, got {count!r}")
    if count >= len(examples):
        return examples
    picked = sorted(rng.sample(range(len(examples)), count))
    return tuple(examples[i] for i in picked)
