"""Where data lives: the shared data sets beside the checkout, the repository root and the download cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

SHARED_DATA_ENV = "ADAPTERHUB_SHARED_DATA"
CACHE_ENV = "ADAPTERHUB_CACHE"
SPLIT_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".tsv")


def _start_points() -> Iterator[Path]:
    yield Path(__file__).resolve().parent
    yield Path.cwd().resolve()


def _ancestors() -> Iterator[Path]:
    seen: set[Path] = set()
    for start in _start_points():
        for directory in (start, *start.parents):
            if directory not in seen:
                seen.add(directory)
                yield directory


def shared_data_dir() -> Path | None:
    """The folder of shared data sets, or ``None`` when there is none.

    ``$ADAPTERHUB_SHARED_DATA`` wins when set (returned as given, even if it does not exist). Otherwise the first
    ``<ancestor>/shared/data`` folder found walking up from this package and then from the current directory,
    which finds ``<repo>/../shared/data`` for a checkout.
    """
    configured = os.environ.get(SHARED_DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    for directory in _ancestors():
        candidate = directory / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def shared_task_names(root: Path | None = None) -> tuple[str, ...]:
    """Sorted names of the task folders (those holding a ``train.*`` file) in ``root`` or :func:`shared_data_dir`."""
    root = shared_data_dir() if root is None else root
    if root is None or not root.is_dir():
        return ()
    names = [
        child.name
        for child in root.iterdir()
        if child.is_dir() and any((child / f"train{suffix}").is_file() for suffix in SPLIT_SUFFIXES)
    ]
    return tuple(sorted(names))


def repo_root() -> Path | None:
    """The checkout holding this package (the first ancestor with ``pyproject.toml`` and ``src/adapterhub``).

    Looks up from this package, then from the current directory; ``None`` for an installed copy run elsewhere.
    """
    for directory in _ancestors():
        if (directory / "pyproject.toml").is_file() and (directory / "src" / "adapterhub").is_dir():
            return directory
    return None


def cache_dir() -> Path:
    """The download cache: ``$ADAPTERHUB_CACHE`` if set, else ``~/.cache/adapterhub``. Not created here."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "adapterhub"
