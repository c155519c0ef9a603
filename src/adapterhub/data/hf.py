"""HuggingFace ``datasets`` sources: a ``save_to_disk`` directory or an ``hf:`` hub name.

``datasets`` is optional: it is imported only here, only when such a source is used.

Image and audio datasets: the column whose feature is ``datasets.Image`` (``datasets.Audio``) holds the rows'
pictures (clips). It is found by its feature type, or named with ``image_column`` / ``audio_column``; a dataset
with several such columns must name one. Its cells are read undecoded (``{"bytes", "path"}``, so neither Pillow
nor an audio decoder runs here) and renamed to the ``image`` (``audio``) column the rest of the data code reads
(:mod:`adapterhub.data.media` decodes them when a batch is built).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from adapterhub.data.tables import Row, Table
from adapterhub.data.task import MediaKind
from adapterhub.errors import ConfigError, did_you_mean

HF_PREFIX = "hf:"
DEV_SPLIT_NAMES: tuple[str, ...] = ("validation", "dev", "valid")


@dataclass(frozen=True)
class MediaColumns:
    """Which column holds the rows' images or audio: ``image`` / ``audio`` name one (at most one of them), or both
    ``None`` to find the ``datasets.Image`` / ``datasets.Audio`` column by its feature type. ``need_audio``: the
    task reads audio (``kind="ctc"``), so a dataset without an ``Audio`` column is refused."""

    image: str | None = None
    audio: str | None = None
    need_audio: bool = False

    def __post_init__(self) -> None:
        if self.image is not None and self.audio is not None:
            raise ConfigError(
                f"image_column={self.image!r} and audio_column={self.audio!r}: a task reads one kind of input; "
                "name one of the columns"
            )


@dataclass(frozen=True)
class HfSplits:
    """Rows of the train split and, when the dataset has one, the dev split (``validation``/``dev``/``valid``).

    ``label_names`` holds the names of a ``ClassLabel`` label column (whose integer values were replaced by those
    names in the rows), else ``None``. ``media`` is ``"image"`` / ``"audio"`` when the rows' input is the
    dataset's ``Image`` / ``Audio`` column (renamed ``image`` / ``audio`` in the rows), else ``None``.
    """

    train: Table
    dev: Table | None
    label_names: tuple[str, ...] | None
    media: MediaKind | None = None


def import_datasets() -> ModuleType:
    """The ``datasets`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import datasets
    except ImportError as error:
        raise ConfigError(
            "loading a HuggingFace dataset needs the optional 'datasets' package: pip install datasets"
        ) from error
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` looks like the output of ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def load_saved(path: Path, label_column: str, media: MediaColumns = MediaColumns()) -> HfSplits:
    """Read a ``save_to_disk`` directory with ``datasets.load_from_disk``."""
    datasets = import_datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises many types for a damaged directory
        raise ConfigError(
            f"{path}: could not be read with datasets.load_from_disk ({type(error).__name__}: {error}); "
            "save the dataset again with save_to_disk"
        ) from error
    return to_splits(loaded, f"hf dataset {str(path)!r}", label_column, media)


@dataclass(frozen=True)
class SplitChoice:
    """Which splits of a ``DatasetDict`` to read: ``train`` (default ``"train"``) and ``dev`` (``None``: the first
    of ``validation`` / ``dev`` / ``valid`` present, else none, and the task splits a seeded dev set off train)."""

    train: str = "train"
    dev: str | None = None


@dataclass(frozen=True)
class HubSource:
    """A parsed ``hf:NAME[:CONFIG][@TRAIN[,DEV]]``: the dataset path, its config and the splits to read."""

    path: str
    config: str | None
    splits: SplitChoice

    @property
    def name(self) -> str:
        """The task's name: ``NAME`` or ``NAME:CONFIG`` (without the split choice)."""
        return self.path if self.config is None else f"{self.path}:{self.config}"


def parse_hub_source(source: str) -> HubSource:
    """``hf:NAME[:CONFIG][@TRAIN[,DEV]]`` -> :class:`HubSource`. ``@TRAIN`` names the split to train on,
    ``@TRAIN,DEV`` the dev (evaluation) split too; a hub dataset or config name never contains ``@``."""
    spec = source[len(HF_PREFIX) :].strip()
    spec, at, chosen = spec.partition("@")
    path, _, config = spec.partition(":")
    if not path:
        raise ConfigError(
            f"{source!r} names no dataset; write hf:NAME, hf:OWNER/NAME, hf:NAME:CONFIG or hf:NAME@TRAIN,DEV"
        )
    splits = SplitChoice()
    if at:
        train, comma, dev = (part.strip() for part in chosen.partition(","))
        if not train or (comma and not dev) or "," in dev:
            raise ConfigError(
                f"{source!r}: after '@' write the train split, optionally a comma and the dev split "
                f"(hf:{spec}@train or hf:{spec}@train,validation)"
            )
        if train == dev:
            raise ConfigError(f"{source!r}: the train and dev splits are both {train!r}; name two splits")
        splits = SplitChoice(train, dev or None)
    return HubSource(path, config or None, splits)


def parse_hub_name(source: str) -> tuple[str, str | None]:
    """``hf:path`` -> ``(path, None)``; ``hf:path:config`` -> ``(path, config)`` (any ``@SPLITS`` left out)."""
    parsed = parse_hub_source(source)
    return parsed.path, parsed.config


def load_hub(source: str, label_column: str, media: MediaColumns = MediaColumns()) -> HfSplits:
    """Load ``hf:NAME[:CONFIG][@TRAIN[,DEV]]`` with ``datasets.load_dataset`` (every split; the chosen ones are
    read, see :func:`to_splits`).

    Without ``:CONFIG``, ``hf:a/b`` is first tried as the repository ``a/b`` and, if the hub has no such
    repository, as dataset ``a`` with config ``b`` (so ``hf:glue/sst2`` means GLUE's SST-2).
    """
    datasets = import_datasets()
    parsed = parse_hub_source(source)
    path, config = parsed.path, parsed.config
    attempts: list[tuple[str, str | None]] = [(path, config)]
    if config is None and path.count("/") == 1:
        owner, _, name = path.partition("/")
        attempts.append((owner, name))
    not_found = _not_found_errors(datasets)
    last: BaseException | None = None
    for name, conf in attempts:
        try:
            loaded = datasets.load_dataset(name, conf) if conf else datasets.load_dataset(name)
        except not_found as error:
            last = error
            continue
        except Exception as error:
            raise _hub_error(source, error) from error
        return to_splits(loaded, f"hf dataset {parsed.name!r}", label_column, media, parsed.splits)
    assert last is not None
    raise _hub_error(source, last) from last


def _not_found_errors(datasets: ModuleType) -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [FileNotFoundError]
    exceptions = getattr(datasets, "exceptions", None)
    error = getattr(exceptions, "DatasetNotFoundError", None)
    if isinstance(error, type) and issubclass(error, BaseException):
        found.append(error)
    return tuple(found)


def _hub_error(source: str, error: BaseException) -> ConfigError:
    return ConfigError(
        f"could not load {source!r} from the HuggingFace hub ({type(error).__name__}: {error}); check the name "
        "(hf:NAME, hf:OWNER/NAME or hf:NAME:CONFIG) and the network, or save the dataset with save_to_disk "
        "on a machine that has it and pass that directory"
    )


def to_splits(
    loaded: Any,
    origin: str,
    label_column: str,
    media: MediaColumns = MediaColumns(),
    choice: SplitChoice = SplitChoice(),
) -> HfSplits:
    """Turn a ``Dataset`` (train only) or ``DatasetDict`` into :class:`HfSplits`: ``choice.train`` as train and
    ``choice.dev`` (or the first of ``validation`` / ``dev`` / ``valid`` present) as dev. A split the dataset
    does not have is refused, naming the splits it has."""
    if hasattr(loaded, "column_names") and not isinstance(loaded.column_names, dict):
        if choice != SplitChoice():
            raise ConfigError(
                f"{origin} is a single split (a Dataset, not a DatasetDict); leave out the split choice "
                f"(@{choice.train}{',' + choice.dev if choice.dev else ''})"
            )
        train, dev = loaded, None
        train_name = "train"
    else:
        splits = list(loaded.keys())
        shown = ", ".join(splits) or "none"
        for role, name in (("train", choice.train), ("dev", choice.dev)):
            if name is not None and name not in splits:
                hint = (
                    "rename the training split to 'train' or choose one with hf:NAME@SPLIT"
                    if role == "train" and choice == SplitChoice()
                    else f"choose one of them{did_you_mean(name, splits)}"
                )
                raise ConfigError(f"{origin} has no {name!r} split (it has: {shown}); {hint}")
        train, train_name = loaded[choice.train], choice.train
        dev_name = choice.dev or next(
            (name for name in DEV_SPLIT_NAMES if name in splits and name != train_name), None
        )
        dev = loaded[dev_name] if dev_name else None
    label_names = _class_names(train, label_column)
    picked = pick_media_column(train, origin, media)
    train_table = _table(train, f"{origin}, split {train_name!r}", label_column, label_names, picked)
    dev_table = None
    if dev is not None:
        dev_table = _table(dev, f"{origin}, split {dev_name!r}", label_column, label_names, picked)
    return HfSplits(train_table, dev_table, label_names, picked[0] if picked else None)


def _feature_kind(feature: Any) -> MediaKind | None:
    """``"image"`` for a ``datasets.Image`` feature, ``"audio"`` for a ``datasets.Audio`` one, else ``None``."""
    datasets = import_datasets()
    if isinstance(feature, datasets.Image):
        return "image"
    return "audio" if isinstance(feature, datasets.Audio) else None


def pick_media_column(split: Any, origin: str, media: MediaColumns) -> tuple[MediaKind, str] | None:
    """``(kind, column)`` of the split's image or audio input, or ``None`` for a text dataset.

    A named column must exist and have that feature type; unnamed, the one ``Image`` or ``Audio`` column is
    taken, and several are refused (name one). ``media.need_audio`` refuses a dataset without an audio column.
    """
    features = dict(split.features)
    found = [(k, column) for column, feature in features.items() if (k := _feature_kind(feature))]
    shown = ", ".join(f"{column} ({type(feature).__name__})" for column, feature in features.items())
    for kind, column in (("image", media.image), ("audio", media.audio)):
        if column is None:
            continue
        if column not in features:
            raise ConfigError(
                f"{origin} has no column {column!r}{did_you_mean(column, list(features))}; the columns are: "
                f"{shown}; pass {kind}_column='<column>' to load_task naming its {kind.title()} column"
            )
        if _feature_kind(features[column]) != kind:
            raise ConfigError(
                f"{origin}: column {column!r} is a {type(features[column]).__name__}, not a datasets."
                f"{kind.title()} column; the columns are: {shown}"
            )
        return kind, column  # type: ignore[return-value]
    if media.need_audio:
        found = [(kind, column) for kind, column in found if kind == "audio"]
        if not found:
            raise ConfigError(
                f"{origin} has no datasets.Audio column (the columns are: {shown}); a ctc (speech recognition) "
                "task reads audio clips with their transcripts: use a dataset with an Audio column"
            )
    if len(found) > 1:
        names = ", ".join(f"{column} ({kind})" for kind, column in found)
        raise ConfigError(
            f"{origin} has several image/audio columns: {names}; name the one to read: pass "
            "image_column='<column>' to load_task (or audio_column='<column>' to load_task)"
        )
    return found[0] if found else None


def _class_names(split: Any, label_column: str) -> tuple[str, ...] | None:
    feature = split.features.get(label_column)
    for candidate in (feature, getattr(feature, "feature", None)):
        names = getattr(candidate, "names", None)
        if isinstance(names, list) and names:
            return tuple(str(n) for n in names)
    return None


def _table(
    split: Any,
    origin: str,
    label_column: str,
    names: tuple[str, ...] | None,
    media: tuple[MediaKind, str] | None,
) -> Table:
    """The split's rows; ``media``'s column renamed to its kind (``image`` / ``audio``), its cells left as the
    undecoded ``{"bytes", "path"}`` dicts ``to_list`` gives."""
    header = tuple(split.column_names)
    if media is not None:
        kind, column = media
        if column != kind and kind in header:
            raise ConfigError(
                f"{origin}: the {kind} input is column {column!r}, but another column is named {kind!r}; remove "
                f"or rename that column (Dataset.rename_column) and save the dataset again"
            )
        header = tuple(kind if name == column else name for name in header)
    records = split.to_list()  # Image / Audio cells stay {"bytes", "path"}: to_list does not decode
    if not records:
        raise ConfigError(f"{origin} is empty (no rows); use a split with examples")
    rows = []
    for number, record in enumerate(records, start=1):
        if names is not None and label_column in record:
            record[label_column] = _named(record[label_column], names)
        if media is not None and media[1] != media[0]:
            record[media[0]] = record.pop(media[1])
        rows.append(Row(number, record))
    return Table(origin, tuple(rows), unit="row", header=header)


def _named(value: Any, names: tuple[str, ...]) -> Any:
    """Replace ClassLabel integers by names; -1 (HF's 'no label') becomes None."""
    if isinstance(value, list):
        return [_named(v, names) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return names[value] if 0 <= value < len(names) else None
    return value
