"""Turning a labelled task (classification or multiple choice) into an instruction-tuning (``generation``) task:
:func:`instruction_task` in memory, :func:`write_instructions` as a folder that :func:`load_task` reads.

Each example becomes a conversation of two turns: the user turn is an instruction, filled in from a template,
that names the allowed answers and holds the text; the assistant turn is the answer as words (the class name, or
the text of the right choice). A template is a ``str.format`` string with these placeholders:

* ``{text}`` (required): the example's text (and its ``text_pair``, on a new line, when it has one);
* ``{answers}``: the allowed answers, comma-separated (the class names; for multiple choice, the row's choices);
* ``{choices}`` (multiple choice only): the row's choices, numbered ``1. ...``, one per line.

Write ``{{`` and ``}}`` for literal braces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.data.loading import load_task
from adapterhub.data.task import Example, Message, TaskData
from adapterhub.errors import AdapterFileError, ConfigError, did_you_mean

CONVERTIBLE_KINDS: tuple[str, ...] = ("classification", "multiple_choice")
DEFAULT_TEMPLATES: dict[str, str] = {
    "classification": "Classify the text. Answer with one of: {answers}.\n\nText: {text}",
    "multiple_choice": (
        "Choose the right answer. Answer with the text of one of the choices.\n\n"
        "Question: {text}\n\nChoices:\n{choices}"
    ),
}
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "classification": ("text", "answers"),
    "multiple_choice": ("text", "answers", "choices"),
}
_NUMBER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class WrittenInstructions:
    """What :func:`write_instructions` wrote: the folder, the converted task and the rows per split."""

    directory: Path
    task: TaskData
    rows: dict[str, int]


def check_template(template: str, kind: str) -> tuple[str, ...]:
    """The placeholders of ``template``, after checking it for a ``kind`` task (see :data:`PLACEHOLDERS`).

    Raises :class:`ConfigError` for a kind that does not convert, a malformed template (a single ``{`` or
    ``}``), an unknown placeholder (naming the valid ones) or a template without ``{text}``.
    """
    _check_kind(kind, "")
    allowed = PLACEHOLDERS[kind]
    if not isinstance(template, str):
        raise ConfigError(f"the template must be a string, got {type(template).__name__}")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ConfigError(
            f"malformed template {template!r} ({error}); write placeholders as {{text}} and literal braces "
            "as {{ and }}"
        ) from None
    unknown = [name for name in fields if name not in allowed]
    if unknown:
        name = unknown[0]
        shown = "{" + name + "}" if name else "{} (an empty placeholder)"
        raise ConfigError(
            f"unknown placeholder {shown} in the template{did_you_mean(name, allowed)}; a {kind} template may "
            f"use {', '.join('{' + p + '}' for p in allowed)} (write {{{{ and }}}} for literal braces)"
        )
    if "text" not in fields:
        raise ConfigError(
            f"the template has no {{text}} placeholder, so the instruction would not hold the example: add "
            f"{{text}} where the text goes (e.g. {DEFAULT_TEMPLATES[kind]!r})"
        )
    return tuple(fields)


def instruction_task(task: TaskData, template: str | None = None, *, name: str | None = None) -> TaskData:
    """``task`` (classification or multiple choice) as a ``generation`` task of user/assistant conversations.

    ``template`` defaults to :data:`DEFAULT_TEMPLATES` for the task's kind. The result's ``answers`` are the
    class names (classification) or empty (multiple choice, whose allowed answers differ per row: each converted
    example keeps its row's choices in ``choices``, written as the row's ``"answers"``). Raises
    :class:`ConfigError` for another kind, class names that are bare numbers (add names to ``task.json``), a bad
    template (:func:`check_template`) or an unlabelled example.
    """
    _check_kind(task.kind, f" ({task.name!r})")
    template = DEFAULT_TEMPLATES[task.kind] if template is None else template
    check_template(template, task.kind)
    if task.kind == "classification":
        numbers = [label for label in task.labels if _NUMBER.fullmatch(label.strip())]
        if len(numbers) == len(task.labels):
            raise ConfigError(
                f"task {task.name!r}: the labels are numbers without names ({', '.join(task.labels)}), and an "
                'instruction task answers in words; add "labels": ["<name of 0>", "<name of 1>", ...] (in index '
                "order) to the task folder's task.json"
            )
    convert = _classification if task.kind == "classification" else _multiple_choice
    splits = {
        split: tuple(
            convert(task, template, example, split, i) for i, example in enumerate(getattr(task, split))
        )
        for split in ("train", "dev")
    }
    answers = task.labels if task.kind == "classification" else ()
    return TaskData(name or task.name, "generation", (), splits["train"], splits["dev"], answers)


def write_instructions(
    source: str | os.PathLike[str] | TaskData,
    destination: str | os.PathLike[str],
    *,
    template: str | None = None,
    overwrite: bool = False,
) -> WrittenInstructions:
    """Convert ``source`` (anything :func:`load_task` reads, or a :class:`TaskData`) with :func:`instruction_task`
    and write it to the folder ``destination``: ``task.json`` (``"kind": "generation"``, ``"answers"``, the
    source, its kind and labels, the template and the sizes), ``train.jsonl`` and ``dev.jsonl`` (one
    ``{"messages": [...]}`` row per example).

    The folder is written whole under a temporary name beside ``destination`` and then renamed into place, so a
    failure leaves nothing half-written. A ``destination`` that holds files is refused unless ``overwrite``.
    Raises :class:`ConfigError` (bad source, template or destination) or :class:`AdapterFileError` (cannot write).
    """
    target = Path(destination).expanduser()
    _check_destination(source, target, overwrite)
    task = source if isinstance(source, TaskData) else load_task(source)
    converted = instruction_task(task, template, name=target.name or None)
    used = DEFAULT_TEMPLATES[task.kind] if template is None else template
    info: dict[str, Any] = {"kind": "generation"}
    if converted.answers:
        info["answers"] = list(converted.answers)
    origin = task.name if isinstance(source, TaskData) else os.fspath(source)
    info["converted_from"] = {"source": origin, "kind": task.kind, "labels": list(task.labels)}
    info["template"] = used
    info["sizes"] = {"train": len(converted.train), "dev": len(converted.dev)}
    files = {
        "task.json": json.dumps(info, indent=2, ensure_ascii=False) + "\n",
        "train.jsonl": _jsonl(converted.train),
        "dev.jsonl": _jsonl(converted.dev),
    }
    _write_folder(target, files)
    return WrittenInstructions(target, converted, dict(info["sizes"]))


# ------------------------------------------------------------------------------------------------ conversion
def _check_kind(kind: str, which: str) -> None:
    if kind not in CONVERTIBLE_KINDS:
        raise ConfigError(
            f"a {kind} task{which} cannot be turned into instructions: only {' and '.join(CONVERTIBLE_KINDS)} "
            "tasks convert (their answers are words: a class name or a choice)"
        )


def _text(example: Example) -> str:
    return example.text if example.text_pair is None else f"{example.text}\n{example.text_pair}"


def _conversation(prompt: str, answer: str, answers: tuple[str, ...] | None = None) -> Example:
    messages = (Message(role="user", content=prompt), Message(role="assistant", content=answer))
    return Example(prompt, choices=answers, messages=messages)


def _label_index(task: TaskData, example: Example, split: str, index: int) -> int:
    if not isinstance(example.label, int):
        raise ConfigError(
            f"task {task.name!r}, {split} example {index} has no label, so it has no answer; label it or "
            "remove it"
        )
    return example.label


def _classification(task: TaskData, template: str, example: Example, split: str, index: int) -> Example:
    answer = task.labels[_label_index(task, example, split, index)]
    prompt = template.format(text=_text(example), answers=", ".join(task.labels))
    return _conversation(prompt, answer)


def _multiple_choice(task: TaskData, template: str, example: Example, split: str, index: int) -> Example:
    choices = example.choices or ()
    answer = choices[_label_index(task, example, split, index)]
    numbered = "\n".join(f"{number}. {choice}" for number, choice in enumerate(choices, start=1))
    prompt = template.format(text=_text(example), answers=", ".join(choices), choices=numbered)
    # the row's allowed answers (each once) score it when evaluating
    return _conversation(prompt, answer, tuple(dict.fromkeys(choices)))


# ------------------------------------------------------------------------------------------------ writing
def _jsonl(examples: tuple[Example, ...]) -> str:
    """One ``{"messages": [...]}`` row per example, with ``"answers"`` where the row has its own."""
    rows = []
    for example in examples:
        row: dict[str, Any] = {"messages": list(example.messages or ())}
        if example.choices:
            row["answers"] = list(example.choices)
        rows.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(rows)


def _check_destination(source: object, target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise ConfigError(
            f"{target} is a file; pass a folder (new or empty) to write the instruction task to"
        )
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.exists() and path.resolve() == target.resolve():
            raise ConfigError(f"{target} is the source itself; write the instruction task to another folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConfigError(
            f"{target} is not empty; pass --overwrite (overwrite=True) to replace it, or choose another folder"
        )


def _write_folder(target: Path, files: dict[str, str]) -> None:
    tag = uuid.uuid4().hex[:8]
    staging = target.parent / f".{target.name}.{tag}.tmp"
    previous = target.parent / f".{target.name}.{tag}.old"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        if target.exists():
            target.rename(previous)
            try:
                staging.rename(target)
            except OSError:
                previous.rename(target)
                raise
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staging.rename(target)
    except OSError as error:
        raise AdapterFileError(
            f"cannot write the instruction task to {target} ({error.strerror or error}); nothing was written "
            "there. Check that the folder is writable and the disk has space"
        ) from error
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
