"""load_task on HuggingFace datasets: save_to_disk directories and hf: hub names (the hub is faked)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from adapterhub.data import Example, load_task
from adapterhub.data.hf import HubSource, SplitChoice, parse_hub_name, parse_hub_source
from adapterhub.errors import ConfigError

datasets = pytest.importorskip("datasets", reason="the optional 'datasets' package is not installed")


def _sst2_like() -> datasets.DatasetDict:
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    train = {"sentence": ["good film", "bad film", "great fun", "dull plot"], "label": [1, 0, 1, 0]}
    dev = {"sentence": ["fun", "awful"], "label": [1, 0]}
    return datasets.DatasetDict(
        train=datasets.Dataset.from_dict(train, features=features),
        validation=datasets.Dataset.from_dict(dev, features=features),
        test=datasets.Dataset.from_dict({"sentence": ["?"], "label": [-1]}, features=features),
    )


def test_saved_dataset_dict_uses_classlabel_names(tmp_path: Path) -> None:
    _sst2_like().save_to_disk(str(tmp_path / "sst2"))
    task = load_task(tmp_path / "sst2", text_column="sentence")
    assert task.name == "sst2" and task.kind == "classification"
    assert task.labels == ("negative", "positive")
    assert task.train[0] == Example("good film", label=1)
    assert [e.text for e in task.dev] == ["fun", "awful"]  # validation, never the unlabelled test split


def test_saved_single_dataset_is_split(tmp_path: Path) -> None:
    data = datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(20)], "score": [i / 10 for i in range(20)]}
    )
    data.save_to_disk(str(tmp_path / "reg"))
    task = load_task(tmp_path / "reg", label_column="score", dev_split_fraction=0.25)
    assert task.kind == "regression" and (len(task.train), len(task.dev)) == (15, 5)


def test_saved_dataset_missing_column_names_the_split(tmp_path: Path) -> None:
    _sst2_like().save_to_disk(str(tmp_path / "sst2"))
    with pytest.raises(
        ConfigError, match=r"split 'train', row 1: no column 'text'; the columns are: sentence"
    ):
        load_task(tmp_path / "sst2")


def test_saved_dataset_without_train_split(tmp_path: Path) -> None:
    data = datasets.DatasetDict(test=datasets.Dataset.from_dict({"text": ["a"], "label": [0]}))
    data.save_to_disk(str(tmp_path / "only_test"))
    with pytest.raises(ConfigError, match=r"no 'train' split \(it has: test\)"):
        load_task(tmp_path / "only_test")


def test_hub_name_falls_back_to_name_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    def fake_load_dataset(*args):
        calls.append(args)
        if args == ("glue/sst2",):
            raise datasets.exceptions.DatasetNotFoundError("no such repository")
        return _sst2_like()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task("hf:glue/sst2", text_column="sentence")
    assert calls == [("glue/sst2",), ("glue", "sst2")]
    assert task.name == "glue/sst2" and len(task.train) == 4 and len(task.dev) == 2
    calls.clear()
    load_task("hf:nyu-mll/glue:sst2", text_column="sentence")
    assert calls == [("nyu-mll/glue", "sst2")]


def test_hub_failure_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match=r"could not load 'hf:imdb' from the HuggingFace hub.*save_to_disk"):
        load_task("hf:imdb")


def test_parse_hub_name() -> None:
    assert parse_hub_name("hf:imdb") == ("imdb", None)
    assert parse_hub_name("hf:glue:sst2") == ("glue", "sst2")
    with pytest.raises(ConfigError, match="names no dataset"):
        parse_hub_name("hf:")


def test_missing_datasets_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sst2_like().save_to_disk(str(tmp_path / "sst2"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ConfigError, match="pip install datasets"):
        load_task(tmp_path / "sst2")
    with pytest.raises(ConfigError, match="pip install datasets"):
        load_task("hf:glue/sst2")


def _fake_hub(monkeypatch: pytest.MonkeyPatch, data: datasets.DatasetDict) -> list[tuple]:
    calls: list[tuple] = []

    def fake_load_dataset(*args):
        calls.append(args)
        return data

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_parse_hub_source_split_choice() -> None:
    assert parse_hub_source("hf:glue:sst2@train,test") == HubSource(
        "glue", "sst2", SplitChoice("train", "test")
    )
    assert parse_hub_source("hf:a/b@extra") == HubSource("a/b", None, SplitChoice("extra", None))
    assert parse_hub_source("hf:a/b") == HubSource("a/b", None, SplitChoice())
    assert parse_hub_name("hf:glue:sst2@train") == ("glue", "sst2")
    for bad, match in [
        ("hf:a@", "after '@' write the train split"),
        ("hf:a@train,", "after '@' write the train split"),
        ("hf:a@train,dev,test", "after '@' write the train split"),
        ("hf:a@test,test", "both 'test'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_hub_source(bad)


def test_hub_split_choice_picks_train_and_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _sst2_like()
    data["extra"] = datasets.Dataset.from_dict(
        {"sentence": ["x", "y", "z"], "label": [0, 1, 0]}, features=data["train"].features
    )
    calls = _fake_hub(monkeypatch, data)
    task = load_task("hf:nyu-mll/glue:sst2@extra,train", text_column="sentence")
    assert calls == [("nyu-mll/glue", "sst2")]
    assert task.name == "nyu-mll/glue:sst2"  # the split choice is not part of the name
    assert [e.text for e in task.train] == ["x", "y", "z"]
    assert [e.text for e in task.dev] == ["good film", "bad film", "great fun", "dull plot"]
    # only the train split named: dev is still the validation split
    task = load_task("hf:nyu-mll/glue:sst2@extra", text_column="sentence")
    assert [e.text for e in task.train] == ["x", "y", "z"] and [e.text for e in task.dev] == ["fun", "awful"]


def test_hub_unknown_split_names_the_available_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_hub(monkeypatch, _sst2_like())
    with pytest.raises(
        ConfigError,
        match=r"has no 'tran' split \(it has: train, validation, test\); choose one of them.*'train'",
    ):
        load_task("hf:glue:sst2@tran", text_column="sentence")
    with pytest.raises(ConfigError, match=r"has no 'dev' split \(it has: train, validation, test\)"):
        load_task("hf:glue:sst2@train,dev", text_column="sentence")


def test_hub_dataset_without_train_split_can_choose_one(monkeypatch: pytest.MonkeyPatch) -> None:
    features = _sst2_like()["train"].features
    only = datasets.DatasetDict(
        fit=datasets.Dataset.from_dict(
            {"sentence": [f"s{i}" for i in range(8)], "label": [0, 1] * 4}, features=features
        ),
        holdout=datasets.Dataset.from_dict({"sentence": ["h"], "label": [1]}, features=features),
    )
    _fake_hub(monkeypatch, only)
    with pytest.raises(ConfigError, match=r"no 'train' split \(it has: fit, holdout\).*hf:NAME@SPLIT"):
        load_task("hf:x/y", text_column="sentence")
    task = load_task("hf:x/y@fit,holdout", text_column="sentence")
    assert (len(task.train), [e.text for e in task.dev]) == (8, ["h"])
    task = load_task("hf:x/y@fit", text_column="sentence", dev_split_fraction=0.25)
    assert (len(task.train), len(task.dev)) == (6, 2)  # no dev split named or found: a seeded split off train
