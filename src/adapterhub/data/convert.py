"""Turning raw rows (:class:`~adapterhub.data.tables.Table`) into a :class:`TaskData`: kind and label inference,
label mapping, and the checks that make a bad row fail with its file and line."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapterhub.data.generation import generation_examples, looks_like_generation
from adapterhub.data.media import media_of
from adapterhub.data.speech import is_transcript_header, transcript_examples
from adapterhub.data.tables import Row, Table
from adapterhub.data.task import Example, Label, MediaKind, TaskData, TaskKind, check_kind
from adapterhub.errors import ConfigError, did_you_mean

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Columns:
    """Which column holds what. ``text_pair`` is optional; ``choices`` is only read for multiple choice.
    ``media`` (``"image"`` or ``"audio"``): the rows are files of that kind, read from the column of that name
    (:mod:`adapterhub.data.media`) instead of ``text``."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    choices: str = "choices"
    media: MediaKind | None = None


def build_task(
    name: str,
    train: Table,
    dev: Table,
    *,
    columns: Columns = Columns(),
    kind: str | None = None,
    labels: Sequence[str | int] | None = None,
    labels_from_dev: bool = False,
    answers: Sequence[str] = (),
) -> TaskData:
    """Map ``train`` and ``dev`` rows to a :class:`TaskData`.

    ``kind`` is inferred when ``None``: a ``choices`` column -> multiple_choice, no label column but a
    ``messages``, ``prompt`` or ``response`` column -> generation (rows read by
    :func:`~adapterhub.data.generation.generation_examples`), list labels -> multilabel, float labels ->
    regression, anything else -> classification; rows with an ``audio`` and a text column and no label column are
    speech transcripts -> ctc (:mod:`adapterhub.data.speech`). ``answers`` (a generation task's allowed answers) is kept on
    the task; other kinds refuse it. Label names come from ``labels`` when given,
    else from the training rows (and the dev rows too when ``labels_from_dev``, used when dev was split off the
    same file): sorted strings, or integers in numeric order. Raises :class:`ConfigError` naming the file, the
    line and the fix for a missing column, a missing or unknown label, or a value of the wrong type.
    """
    train_rows = _Rows(train, columns)
    dev_rows = _Rows(dev, columns)
    transcripts = is_transcript_header(train.header, columns.text, columns.label)
    resolved: TaskKind = (
        check_kind(kind) if kind is not None else "ctc" if transcripts else train_rows.infer_kind()
    )
    if resolved == "ctc":
        if labels is not None or answers:
            raise ConfigError(
                f"task {name!r}: a ctc (speech recognition) task has no label names or answers (its targets are "
                "the transcripts' characters); remove labels / answers"
            )
        return TaskData(
            name,
            resolved,
            (),
            transcript_examples(train, columns.text),
            transcript_examples(dev, columns.text),
        )
    if columns.media is not None and resolved in ("multiple_choice", "generation"):
        raise ConfigError(
            f"task {name!r}: {columns.media} rows are for classification, regression and multilabel tasks, not "
            f'{resolved}; set "kind" in task.json (or pass kind=...) to one of those'
        )
    if resolved == "generation":
        if labels is not None:
            raise ConfigError(
                f"task {name!r}: a generation task has no label names, got labels={list(labels)!r}; "
                'list its allowed answers as "answers" in task.json instead'
            )
        return TaskData(
            name, resolved, (), generation_examples(train), generation_examples(dev), tuple(answers)
        )
    if answers:
        raise ConfigError(
            f"task {name!r}: answers {list(answers)!r} are for generation tasks, but this is a {resolved} task; "
            'set "kind": "generation" or remove "answers"'
        )
    if resolved == "regression":
        return TaskData(name, resolved, (), train_rows.regression(), dev_rows.regression())
    if resolved == "multiple_choice":
        names = _choice_names(labels, train_rows, dev_rows)
        return TaskData(name, resolved, names, train_rows.multiple_choice(), dev_rows.multiple_choice())
    multi = resolved == "multilabel"
    given = labels is not None
    if labels is not None:
        names = _given_names(labels)
    else:
        sources = [train_rows, dev_rows] if labels_from_dev else [train_rows]
        names = _infer_names([pair for rows in sources for pair in rows.class_keys(multi)])
    return TaskData(
        name,
        resolved,
        names,
        train_rows.classes(names, multi=multi, given=given, split="train"),
        dev_rows.classes(names, multi=multi, given=given, split="dev"),
    )


def _given_names(labels: Sequence[str | int]) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise ConfigError(f"labels= must be a list of label names, got the string {labels!r}")
    names = tuple(str(label) for label in labels)
    if not names:
        raise ConfigError("labels= is empty; list every label name, or leave it out to infer them")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"labels= lists {', '.join(map(repr, duplicates))} more than once; list each label once"
        )
    return names


def _choice_names(labels: Sequence[str | int] | None, *tables: _Rows) -> tuple[str, ...]:
    count, row, rows = max(((*rows.most_choices(), rows) for rows in tables), key=lambda item: item[0])
    if labels is None:
        return tuple(str(i) for i in range(count))
    names = _given_names(labels)
    if len(names) < count:
        raise ConfigError(
            f"labels= has {len(names)} names but {rows.table.where(row)} has {count} choices; a multiple-choice "
            "task has one label name per choice (or leave labels= out)"
        )
    return names


def _infer_names(keys: list[tuple[str, str | int]]) -> tuple[str, ...]:
    strings = {key for _, key in keys if isinstance(key, str)}
    ints = {key for _, key in keys if isinstance(key, int)}
    if strings and ints:
        where_str = next(where for where, key in keys if isinstance(key, str))
        where_int = next(where for where, key in keys if isinstance(key, int))
        raise ConfigError(
            f"labels mix strings ({where_str}) and integers ({where_int}); use one type for every label, "
            "or pass labels=[...] with the label names in index order"
        )
    if not strings and not ints:
        raise ConfigError("no labels found in the training data; every training row needs a label")
    if ints:
        return tuple(str(i) for i in sorted(ints))
    return tuple(sorted(strings))


class _Rows:
    """Typed access to one table's columns, with every error naming the row."""

    def __init__(self, table: Table, columns: Columns) -> None:
        self.table = table
        self.columns = columns
        self.present = table.header

    # ---- raw access --------------------------------------------------------------------------------------
    def _missing_column(self, row: Row, column: str, parameter: str) -> ConfigError:
        existing = list(row.values)
        hint = did_you_mean(column, existing)
        return ConfigError(
            f"{self.table.where(row)}: no column {column!r}{hint}; the columns are: "
            f"{', '.join(existing) or '(none)'}. Pass {parameter}='<column>' to load_task, or fix the data"
        )

    def _text(self, row: Row, column: str, parameter: str) -> str:
        if column not in row.values:
            raise self._missing_column(row, column, parameter)
        value = row.values[column]
        if not isinstance(value, str):
            raise ConfigError(
                f"{self.table.where(row)}: column {column!r} must hold a string, got {_describe(value)}; "
                "fix the row"
            )
        return value

    def _pair(self, row: Row) -> str | None:
        column = self.columns.text_pair
        return None if column is None else self._text(row, column, "text_pair_column")

    def _label(self, row: Row) -> Any:
        column = self.columns.label
        if column not in self.present:
            raise self._missing_column(row, column, "label_column")
        value = row.values.get(column)
        if self.table.from_text and isinstance(value, str):
            value = _parse_cell(value)
        if value is None or value == "":
            raise ConfigError(
                f"{self.table.where(row)}: no label in column {column!r}; every row needs a label "
                "(fill it in or remove the row)"
            )
        return value

    def _bad_label(self, row: Row, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.table.where(row)}: label {value!r} {expected}")

    # ---- kind inference ----------------------------------------------------------------------------------
    def infer_kind(self) -> TaskKind:
        if self.columns.choices in self.present:
            return "multiple_choice"
        if looks_like_generation(self.present, self.columns.label):
            return "generation"
        values = [self._label(row) for row in self.table.rows]
        if any(isinstance(v, list | tuple) for v in values):
            return "multilabel"
        if any(isinstance(v, float) for v in values):
            return "regression"
        return "classification"

    # ---- regression --------------------------------------------------------------------------------------
    def regression(self) -> tuple[Example, ...]:
        return tuple(self._example(row, self._float(row)) for row in self.table.rows)

    def _float(self, row: Row) -> float:
        value = self._label(row)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self._bad_label(row, value, "is not a number; a regression task needs numeric labels")
        try:
            number = float(value)
        except ValueError:
            raise self._bad_label(
                row, value, "is not a number; a regression task needs numeric labels (or pass kind=...)"
            ) from None
        if not math.isfinite(number):
            raise self._bad_label(row, value, "is not a finite number; fix the row")
        return number

    # ---- classification and multilabel -------------------------------------------------------------------
    def _keys(self, row: Row, multi: bool) -> list[str | int]:
        value = self._label(row)
        if multi:
            items = list(value) if isinstance(value, list | tuple) else [value]
            return [self._key(row, item, value) for item in items]
        if isinstance(value, list | tuple):
            raise self._bad_label(row, value, "is a list; pass kind='multilabel' for several labels per row")
        return [self._key(row, value, value)]

    def _key(self, row: Row, item: Any, whole: Any) -> str | int:
        if isinstance(item, bool):
            return str(item)
        if isinstance(item, float):
            if item.is_integer():
                return int(item)
            raise self._bad_label(
                row, whole, "is a fractional number; pass kind='regression' for numeric targets"
            )
        if isinstance(item, str | int):
            return item
        raise self._bad_label(
            row, whole, f"has type {type(item).__name__}; labels must be strings or integers"
        )

    def class_keys(self, multi: bool) -> list[tuple[str, str | int]]:
        return [(self.table.where(row), key) for row in self.table.rows for key in self._keys(row, multi)]

    def classes(self, names: tuple[str, ...], *, multi: bool, given: bool, split: str) -> tuple[Example, ...]:
        index = {name: i for i, name in enumerate(names)}
        examples = []
        for row in self.table.rows:
            ids = [self._lookup(row, key, names, index, given, split) for key in self._keys(row, multi)]
            label: Label = tuple(sorted(set(ids))) if multi else ids[0]
            examples.append(self._example(row, label))
        return tuple(examples)

    def _example(self, row: Row, label: Label) -> Example:
        """A text row, or an image / audio row (its file checked, path relative to the table's folder)."""
        if self.columns.media is not None:
            return Example("", None, None, label, media=media_of(self.table, row, self.columns.media))
        return Example(self._text(row, self.columns.text, "text_column"), self._pair(row), None, label)

    def _lookup(
        self, row: Row, key: str | int, names: tuple[str, ...], index: dict[str, int], given: bool, split: str
    ) -> int:
        found = index.get(str(key))
        if found is not None:
            return found
        if given and isinstance(key, int) and 0 <= key < len(names):
            return key  # an integer label indexes into the given names
        known = ", ".join(map(repr, names))
        hint = did_you_mean(str(key), names)
        if given:
            fix = "add it to labels= or fix the row"
        elif split == "dev":
            fix = "it does not occur in the training data; fix the row, or pass labels=[...] listing every label"
        else:
            fix = "fix the row"
        raise self._bad_label(row, key, f"is not one of the labels {known}{hint}; {fix}")

    # ---- multiple choice ---------------------------------------------------------------------------------
    def _choices(self, row: Row) -> tuple[str, ...]:
        column = self.columns.choices
        if column not in row.values:
            raise self._missing_column(row, column, "choices_column")
        value = row.values[column]
        if self.table.from_text and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(
                    f"{self.table.where(row)}: column {column!r} must hold a JSON list of strings such as "
                    '["first", "second"]; fix the row'
                ) from None
        if not isinstance(value, list | tuple) or not value or not all(isinstance(c, str) for c in value):
            raise ConfigError(
                f"{self.table.where(row)}: column {column!r} must hold a non-empty list of strings, got "
                f"{_describe(value)}; fix the row"
            )
        return tuple(value)

    def most_choices(self) -> tuple[int, Row]:
        """The largest number of choices on a row, and that row."""
        return max(((len(self._choices(row)), row) for row in self.table.rows), key=lambda pair: pair[0])

    def multiple_choice(self) -> tuple[Example, ...]:
        """Rows as examples; :func:`_choice_names` has already checked every row against the label names."""
        examples = []
        for row in self.table.rows:
            choices = self._choices(row)
            text = self._text(row, self.columns.text, "text_column")
            examples.append(Example(text, self._pair(row), choices, self._choice_index(row, choices)))
        return tuple(examples)

    def _choice_index(self, row: Row, choices: tuple[str, ...]) -> int:
        value = self._label(row)
        if isinstance(value, str) and _INT.fullmatch(value.strip()):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
            return value
        if isinstance(value, str) and value in choices:
            return choices.index(value)
        raise self._bad_label(
            row,
            value,
            f"is not a choice index in 0..{len(choices) - 1} nor the text of a choice; fix the row",
        )


def _parse_cell(cell: str) -> Any:
    """A CSV/TSV label cell as a value: integer, float, JSON list, or the stripped string ('' when blank)."""
    text = cell.strip()
    if _INT.fullmatch(text):
        return int(text)
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return float(text) if _FLOAT.fullmatch(text) else text


def _describe(value: Any) -> str:
    return "nothing (null)" if value is None else f"{type(value).__name__} {value!r}"[:80]
