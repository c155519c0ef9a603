"""Fixtures for the adapterhub.data tests: a tiny offline tokenizer and helpers that write data files."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("adapterhub") is None:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "a",
    "an",
    "movie",
    "film",
    "plot",
    "is",
    "was",
    "and",
    "but",
    "not",
    "very",
    "good",
    "bad",
    "great",
    "awful",
    "fun",
    "dull",
    "it",
    "i",
    "liked",
    "hated",
    "who",
    "what",
    "did",
    "he",
    "she",
    "go",
    "home",
    "stay",
    "run",
    "walk",
    "yes",
    "no",
    "cat",
    "dog",
]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A BERT WordPiece tokenizer over a few dozen words, built from a vocab file (no downloads)."""
    from transformers import BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-tokenizer")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(directory))


@pytest.fixture
def write_jsonl() -> Callable[[Path, Iterable[dict[str, Any]]], Path]:
    """``write_jsonl(path, rows)`` writes one JSON object per line and returns ``path``."""

    def write(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty ``$ADAPTERHUB_CACHE`` so nothing is read from or written to the real one."""
    cache = tmp_path / "adapterhub-cache"
    monkeypatch.setenv("ADAPTERHUB_CACHE", str(cache))
    return cache
