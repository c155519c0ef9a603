"""The two value types every loader returns: :class:`Example` (one labelled row, or one conversation) and
:class:`TaskData` (a task)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, TypedDict, get_args

from adapterhub.errors import ConfigError, did_you_mean

TaskKind = Literal["classification", "regression", "multilabel", "multiple_choice", "generation", "ctc"]
KINDS: tuple[str, ...] = get_args(TaskKind)
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class Message(TypedDict):
    """One turn of a conversation, in the OpenAI chat format: ``role`` is one of :data:`ROLES`."""

    role: str
    content: str


Label = int | float | tuple[int, ...]
MediaKind = Literal["image", "audio"]
MEDIA_KINDS: tuple[str, ...] = get_args(MediaKind)


@dataclass(frozen=True)
class Media:
    """The image or audio file of one row: ``kind`` (``"image"`` or ``"audio"``), ``path`` (absolute, checked to
    exist and to open as that kind when the row was read: :mod:`adapterhub.data.media`) and ``where`` (the row's
    file and line, e.g. ``/data/pets/train.jsonl, line 3``), which errors raised when the file is decoded name.

    ``data``: the file's encoded bytes (PNG, JPEG, WAV, ...) when the row carried them itself (a HuggingFace
    ``Image`` / ``Audio`` column); they are decoded instead of reading ``path``, which then only names the file
    (the path the dataset stored, or the row)."""

    kind: MediaKind
    path: str
    where: str = ""
    data: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in MEDIA_KINDS:
            raise ConfigError(f"Media.kind must be one of {', '.join(MEDIA_KINDS)}, got {self.kind!r}")
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"Media.path must be a non-empty string, got {self.path!r}")
        if self.data is not None and not isinstance(self.data, bytes):
            raise ConfigError(f"Media.data must be bytes or None, got {type(self.data).__name__}")


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

    A generation example holds its conversation in ``messages`` (a tuple of :class:`Message`, each copied into a
    fresh ``{"role", "content"}`` dict; the last one is the assistant's response), ``label`` is ``None`` and
    ``text`` is the content of the turn just before the final response (the prompt). Other kinds have
    ``messages=None``. The checks that a conversation is well formed are made when rows are read
    (:mod:`adapterhub.data.generation`).

    An image or audio row (``{"image": "cat.png", "label": ...}``) holds its file in ``media`` and has
    ``text=""``; :attr:`image` and :attr:`audio` give the file's path for that kind (else ``None``). A speech
    recognition (``ctc``) row (``{"audio": "0.wav", "text": "hello world"}``) holds its audio file in ``media``
    and its transcript in ``text`` (whitespace runs collapsed to one space: :mod:`adapterhub.data.speech`).
    """

    text: str
    text_pair: str | None = None
    choices: tuple[str, ...] | None = None
    label: Label | None = None
    messages: tuple[Message, ...] | None = field(default=None, hash=False)
    media: Media | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ConfigError(f"Example.text must be a string, got {type(self.text).__name__}")
        if self.choices is not None and not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", tuple(self.choices))
        if isinstance(self.label, list):
            object.__setattr__(self, "label", tuple(self.label))
        if self.messages is not None:
            copied = tuple(Message(role=m["role"], content=m["content"]) for m in self.messages)
            object.__setattr__(self, "messages", copied)
        if self.media is not None and not isinstance(self.media, Media):
            raise ConfigError(f"Example.media must be a Media, got {type(self.media).__name__}")

    @property
    def image(self) -> str | None:
        """The path of this row's image, or ``None`` (a text or audio row)."""
        return self.media.path if self.media is not None and self.media.kind == "image" else None

    @property
    def audio(self) -> str | None:
        """The path of this row's audio file, or ``None`` (a text or image row)."""
        return self.media.path if self.media is not None and self.media.kind == "audio" else None


@dataclass(frozen=True, repr=False)
class TaskData:
    """A task: its kind, its label names and its train / dev examples.

    ``labels`` lists label names in index order (``labels[i]`` is the name of index ``i``): class names for
    classification and multilabel, ``("0", "1", ...)`` (one per choice, as many as the row with the most
    choices; a row may have fewer) for multiple choice, and ``()`` for regression, generation and ``ctc`` (speech
    recognition: every row an audio file with its transcript, the targets are characters). Construction
    checks that every example's label fits ``kind`` and ``labels``.

    ``answers`` is for generation tasks only: the answers the response is meant to be one of (e.g. the class
    names of a converted classification task), so that an evaluation can count how many generated answers are
    allowed ones; ``()`` when any response is allowed.
    """

    name: str
    kind: TaskKind
    labels: tuple[str, ...]
    train: tuple[Example, ...] = field(default=())
    dev: tuple[Example, ...] = field(default=())
    answers: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        check_kind(self.kind)
        for attr in ("labels", "train", "dev", "answers"):
            value = getattr(self, attr)
            if not isinstance(value, tuple):
                object.__setattr__(self, attr, tuple(value))
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"task {self.name!r}: label names must be unique, got {self.labels}")
        unlabelled = self.kind in ("regression", "generation", "ctc")
        if unlabelled and self.labels:
            raise ConfigError(f"task {self.name!r}: a {self.kind} task has no label names, got {self.labels}")
        if not unlabelled and not self.labels:
            raise ConfigError(f"task {self.name!r}: a {self.kind} task needs at least one label name")
        self._check_answers()
        self._check_media()
        for split in ("train", "dev"):
            for index, example in enumerate(getattr(self, split)):
                problem = self._example_problem(example)
                if problem:
                    raise ConfigError(f"task {self.name!r}, {split} example {index}: {problem}")

    def _check_answers(self) -> None:
        if self.answers and self.kind != "generation":
            raise ConfigError(
                f"task {self.name!r}: answers are for generation tasks, but this is a {self.kind} task; "
                "use labels for its label names"
            )
        if not all(isinstance(a, str) and a.strip() for a in self.answers):
            raise ConfigError(f"task {self.name!r}: answers must be non-empty strings, got {self.answers!r}")
        if len(set(self.answers)) != len(self.answers):
            raise ConfigError(f"task {self.name!r}: answers must be unique, got {self.answers!r}")

    def _check_media(self) -> None:
        found = {None if e.media is None else e.media.kind for e in (*self.train, *self.dev)}
        if len(found) > 1:
            shown = ", ".join(sorted(kind or "text" for kind in found))
            raise ConfigError(
                f"task {self.name!r} mixes rows of several kinds ({shown}); every row of a task is text, or "
                "every row is an image, or every row is an audio file"
            )
        if self.kind == "ctc" and found - {"audio"}:
            raise ConfigError(
                f"task {self.name!r}: a ctc (speech recognition) task reads audio rows with their transcripts "
                '({"audio": "clip.wav", "text": "..."}); every row needs an audio file'
            )
        if found - {None} and self.kind not in ("classification", "regression", "multilabel", "ctc"):
            raise ConfigError(
                f"task {self.name!r}: image and audio rows are for classification, regression and multilabel "
                f"tasks (audio also for ctc), not {self.kind}"
            )

    @property
    def media(self) -> MediaKind | None:
        """``"image"`` or ``"audio"`` when the rows are files of that kind, ``None`` for text rows."""
        for example in (*self.train, *self.dev):
            return None if example.media is None else example.media.kind
        return None

    def _example_problem(self, example: Example) -> str | None:
        if self.kind == "generation":
            if not example.messages:
                return "a generation example needs messages (its conversation)"
            if example.label is not None:
                return (
                    f"a generation example has no label (its response is in messages), got {example.label!r}"
                )
            return None
        if example.messages is not None:
            return f"only generation examples hold messages; this is a {self.kind} task"
        if self.kind == "ctc":
            if example.label is not None:
                return f"a ctc example has no label (its transcript is its text), got {example.label!r}"
            return None if example.text.strip() else "a ctc example needs its transcript as text"
        return self._label_problem(example)

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
        """Output width of a head for this task: 1 for regression, else ``len(labels)`` (choices for MC; 0 for
        generation and ctc, which predict with the model's own output layer)."""
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
            answers=self.answers,
        )

    def __repr__(self) -> str:
        return (
            f"TaskData(name={self.name!r}, kind={self.kind!r}, labels={self.labels!r}, "
            f"train=<{len(self.train)} examples>, dev=<{len(self.dev)} examples>"
            + (f", answers={self.answers!r})" if self.answers else ")")
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
