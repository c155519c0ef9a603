"""HuggingFace ``datasets`` sources: a ``save_to_disk`` directory or an ``hf:`` hub name.

``datasets`` is optional: it is imported only here, only when such a source is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from adapterhub.data.tables import Row, Table
from adapterhub.errors import ConfigError

HF_PREFIX = "hf:"
DEV_SPLIT_NAMES: tuple[str, ...] = ("validation", "dev", "valid")


@dataclass(frozen=True)
class HfSplits:
    """Rows of the train split and, when the dataset has one, the dev split (``validation``/``dev``/``valid``).

    ``label_names`` holds the names of a ``ClassLabel`` label column (whose integer values were replaced by those
    names in the rows), else ``None``.
    """

    train: Table
    dev: Table | None
    label_names: tuple[str, ...] | None


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


def load_saved(path: Path, label_column: str) -> HfSplits:
    """Read a ``save_to_disk`` directory with ``datasets.load_from_disk``."""
    datasets = import_datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises many types for a damaged directory
        raise ConfigError(
            f"{path}: could not be read with datasets.load_from_disk ({type(error).__name__}: {error}); "
            "save the dataset again with save_to_disk"
        ) from error
    return to_splits(loaded, f"hf dataset {str(path)!r}", label_column)


def parse_hub_name(source: str) -> tuple[str, str | None]:
    """``hf:path`` -> ``(path, None)``; ``hf:path:config`` -> ``(path, config)``."""
    spec = source[len(HF_PREFIX) :].strip()
    path, _, config = spec.partition(":")
    if not path:
        raise ConfigError(f"{source!r} names no dataset; write hf:NAME, hf:OWNER/NAME or hf:NAME:CONFIG")
    return path, config or None


def load_hub(source: str, label_column: str) -> HfSplits:
    """Load ``hf:NAME[:CONFIG]`` with ``datasets.load_dataset``.

    Without ``:CONFIG``, ``hf:a/b`` is first tried as the repository ``a/b`` and, if the hub has no such
    repository, as dataset ``a`` with config ``b`` (so ``hf:glue/sst2`` means GLUE's SST-2).
    """
    datasets = import_datasets()
    path, config = parse_hub_name(source)
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
        return to_splits(loaded, f"hf dataset {source[len(HF_PREFIX) :]!r}", label_column)
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


def to_splits(loaded: Any, origin: str, label_column: str) -> HfSplits:
    """Turn a ``Dataset`` (train only) or ``DatasetDict`` into :class:`HfSplits`."""
    if hasattr(loaded, "column_names") and not isinstance(loaded.column_names, dict):
        train, dev = loaded, None
        train_name = "train"
    else:
        splits = list(loaded.keys())
        if "train" not in splits:
            raise ConfigError(
                f"{origin} has no 'train' split (it has: {', '.join(splits) or 'none'}); "
                "rename the training split to 'train'"
            )
        train, train_name = loaded["train"], "train"
        dev_name = next((name for name in DEV_SPLIT_NAMES if name in splits), None)
        dev = loaded[dev_name] if dev_name else None
    label_names = _class_names(train, label_column)
    train_table = _table(train, f"{origin}, split {train_name!r}", label_column, label_names)
    dev_table = None
    if dev is not None:
        dev_table = _table(dev, f"{origin}, split {dev_name!r}", label_column, label_names)
    return HfSplits(train_table, dev_table, label_names)


def _class_names(split: Any, label_column: str) -> tuple[str, ...] | None:
    feature = split.features.get(label_column)
    for candidate in (feature, getattr(feature, "feature", None)):
        names = getattr(candidate, "names", None)
        if isinstance(names, list) and names:
            return tuple(str(n) for n in names)
    return None


def _table(split: Any, origin: str, label_column: str, names: tuple[str, ...] | None) -> Table:
    records = split.to_list()
    if not records:
        raise ConfigError(f"{origin} is empty (no rows); use a split with examples")
    rows = []
    for number, record in enumerate(records, start=1):
        if names is not None and label_column in record:
            record[label_column] = _named(record[label_column], names)
        rows.append(Row(number, record))
    return Table(origin, tuple(rows), unit="row", header=tuple(split.column_names))


def _named(value: Any, names: tuple[str, ...]) -> Any:
    """Replace ClassLabel integers by names; -1 (HF's 'no label') becomes None."""
    if isinstance(value, list):
        return [_named(v, names) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return names[value] if 0 <= value < len(names) else None
    return value
