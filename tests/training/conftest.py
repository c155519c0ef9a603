"""Fixtures for the training tests: a tiny BERT with its tokenizer saved to disk, and tiny generated data."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from tiny_models import save_tiny_bert

POSITIVE = ["good", "great", "fun", "liked", "nice"]
NEGATIVE = ["bad", "awful", "dull", "hated", "boring"]
FILLER = ["the", "a", "movie", "film", "plot", "is", "was", "and", "very", "it", "cat", "dog", "home"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]


def sentence(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def sentiment_rows(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        rows.append({"text": sentence(rng, positive), "label": "positive" if positive else "negative"})
    return rows


def choice_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Which of three sentences is positive? (multiple choice)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        answer = rng.randrange(3)
        choices = [sentence(rng, i == answer) for i in range(3)]
        rows.append({"text": "which one is nice", "choices": choices, "label": answer})
    return rows


def regression_rows(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        rows.append({"text": sentence(rng, positive), "label": 1.0 if positive else -1.0})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_task_dir(root: Path, kind: str = "classification", train: int = 64, dev: int = 32) -> Path:
    rows = {"classification": sentiment_rows, "multiple_choice": choice_rows, "regression": regression_rows}[
        kind
    ]
    write_jsonl(root / "train.jsonl", rows(train, 1))
    write_jsonl(root / "dev.jsonl", rows(dev, 2))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (no OpenMP barriers, which cost most on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT (random weights, no dropout) and its WordPiece tokenizer, saved to disk."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), VOCAB)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture
def load_tiny(tiny_model_dir: Path) -> Any:
    def load() -> torch.nn.Module:
        return transformers.AutoModel.from_pretrained(str(tiny_model_dir))

    return load


@pytest.fixture
def task_dir(tmp_path: Path) -> Any:
    """``task_dir(kind, train=64, dev=32)``: a generated task folder of that kind."""

    def make(kind: str = "classification", train: int = 64, dev: int = 32) -> Path:
        return make_task_dir(tmp_path / f"{kind}-{train}-{dev}", kind, train, dev)

    return make


@pytest.fixture
def sentiment_dir(tmp_path: Path) -> Path:
    return make_task_dir(tmp_path / "sentiment")


@pytest.fixture
def sentiment_task(sentiment_dir: Path) -> Any:
    from adapterhub.data import load_task

    return load_task(sentiment_dir)
