"""load_task on task folders, single files and names: formats, inference, and the errors for bad data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from adapterhub.data import Example, load_task, shared_data_dir, shared_task_names
from adapterhub.data import paths as data_paths
from adapterhub.errors import AdapterFileError, ConfigError

SENTIMENT = [
    {"text": "good film", "label": "positive"},
    {"text": "bad film", "label": "negative"},
    {"text": "great fun", "label": "positive"},
    {"text": "dull plot", "label": "negative"},
]


def test_directory_of_jsonl(tmp_path: Path, write_jsonl) -> None:
    write_jsonl(tmp_path / "sst" / "train.jsonl", SENTIMENT)
    write_jsonl(tmp_path / "sst" / "dev.jsonl", SENTIMENT[:2])
    task = load_task(tmp_path / "sst")
    assert task.name == "sst" and task.kind == "classification"
    assert task.labels == ("negative", "positive")
    assert task.train[0] == Example("good film", label=1)
    assert [e.label for e in task.dev] == [1, 0]


def test_directory_of_csv_with_validation_split_and_pair(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(
        'premise,hypothesis,label\n"a cat, a dog",a cat,entailment\nthe dog,a cat,contradiction\n',
        encoding="utf-8",
    )
    (tmp_path / "validation.csv").write_text("premise,hypothesis,label\nx,y,entailment\n", encoding="utf-8")
    task = load_task(tmp_path, text_column="premise", text_pair_column="hypothesis")
    assert task.train[0] == Example("a cat, a dog", "a cat", None, 1)
    assert task.labels == ("contradiction", "entailment")
    assert len(task.dev) == 1


def test_tsv_integer_labels_keep_numeric_order(tmp_path: Path) -> None:
    rows = "".join(f"text {i}\t{label}\n" for i, label in enumerate([10, 2, 0, 2, 10, 0]))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nx\t2\n", encoding="utf-8")
    task = load_task(tmp_path, text_column="sentence")
    assert task.labels == ("0", "2", "10")
    assert [e.label for e in task.train] == [2, 1, 0, 1, 2, 0]
    assert task.dev[0].label == 1


def test_task_json_sets_kind_and_labels(tmp_path: Path, write_jsonl) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 3}])
    write_jsonl(tmp_path / "dev.jsonl", [{"text": "c", "label": 2}])
    (tmp_path / "task.json").write_text(json.dumps({"kind": "regression"}), encoding="utf-8")
    task = load_task(tmp_path)
    assert task.kind == "regression" and task.labels == ()
    assert task.train[1].label == 3.0 and isinstance(task.train[1].label, float)
    (tmp_path / "task.json").write_text(json.dumps({"labels": ["3", "2", "1"]}), encoding="utf-8")
    assert [e.label for e in load_task(tmp_path).train] == [2, 0]
    assert load_task(tmp_path, labels=["1", "2", "3"]).train[1].label == 2  # arguments win over task.json


def test_kind_inference(tmp_path: Path, write_jsonl) -> None:
    regression = write_jsonl(tmp_path / "reg.jsonl", [{"text": str(i), "label": i / 4} for i in range(10)])
    assert load_task(regression).kind == "regression"
    multilabel = write_jsonl(
        tmp_path / "multi.jsonl",
        [{"text": str(i), "label": ["fun", "dull"][: i % 3]} for i in range(10)],
    )
    task = load_task(multilabel)
    assert task.kind == "multilabel" and task.labels == ("dull", "fun")
    assert {e.label for e in task.train + task.dev} == {(), (1,), (0, 1)}
    choice = write_jsonl(
        tmp_path / "mc.jsonl",
        [{"text": f"q{i}", "choices": ["a", "b", "c"], "label": i % 3} for i in range(10)],
    )
    task = load_task(choice)
    assert task.kind == "multiple_choice" and task.labels == ("0", "1", "2") and task.num_labels == 3
    assert task.train[0].choices == ("a", "b", "c")


def test_multiple_choice_label_may_be_the_choice_text_and_rows_may_have_fewer_choices(
    tmp_path: Path, write_jsonl
) -> None:
    write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"text": "q", "choices": ["a", "b", "c"], "label": "c"},
            {"text": "r", "choices": ["x", "y"], "label": 1},
        ],
    )
    write_jsonl(tmp_path / "dev.jsonl", [{"text": "s", "choices": ["u", "v", "w"], "label": "0"}])
    task = load_task(tmp_path)
    assert [e.label for e in task.train] == [2, 1] and task.dev[0].label == 0
    assert task.labels == ("0", "1", "2")


def test_csv_multiple_choice_reads_json_list_cells(tmp_path: Path) -> None:
    path = tmp_path / "mc.csv"
    path.write_text('text,choices,label\nq,"[""yes"", ""no""]",1\nr,"[""a"", ""b""]",0\n', encoding="utf-8")
    task = load_task(path, kind="multiple_choice", dev_split_fraction=0.5)
    assert {e.choices for e in task.train + task.dev} == {("yes", "no"), ("a", "b")}


def test_single_file_split_is_seeded(tmp_path: Path, write_jsonl) -> None:
    path = write_jsonl(tmp_path / "all.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(100)])
    first = load_task(path, dev_split_fraction=0.2, seed=3)
    assert first.name == "all" and (len(first.train), len(first.dev)) == (80, 20)
    assert first == load_task(path, dev_split_fraction=0.2, seed=3)
    assert first.dev != load_task(path, dev_split_fraction=0.2, seed=4).dev
    texts = sorted(e.text for e in first.train + first.dev)
    assert texts == sorted(f"t{i}" for i in range(100))


def test_single_file_infers_labels_from_both_halves(tmp_path: Path, write_jsonl) -> None:
    rows = [{"text": f"t{i}", "label": "common"} for i in range(9)] + [{"text": "rare", "label": "rare"}]
    task = load_task(write_jsonl(tmp_path / "x.jsonl", rows), dev_split_fraction=0.5)
    assert task.labels == ("common", "rare")


def test_integer_labels_index_into_given_names(tmp_path: Path, write_jsonl) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}] * 3)
    task = load_task(path, labels=["neg", "pos"])
    assert task.labels == ("neg", "pos") and {e.label for e in task.train} == {0, 1}


def test_bool_labels_become_names(tmp_path: Path, write_jsonl) -> None:
    path = write_jsonl(
        tmp_path / "x.jsonl", [{"text": "a", "label": True}, {"text": "b", "label": False}] * 3
    )
    assert load_task(path).labels == ("False", "True")


# ---- errors ---------------------------------------------------------------------------------------------------
def _error(exc: type[Exception], *args, **kwargs) -> str:
    with pytest.raises(exc) as info:
        load_task(*args, **kwargs)
    return str(info.value)


def test_missing_column_names_existing_columns(tmp_path: Path, write_jsonl) -> None:
    path = write_jsonl(
        tmp_path / "x.jsonl", [{"sentence": "a", "label": "x"}, {"sentence": "b", "label": "y"}]
    )
    message = _error(ConfigError, path)
    assert re.search(r"x\.jsonl, line [12]: no column 'text'", message)
    assert "sentence, label" in message and "text_column=" in message
    message = _error(ConfigError, path, text_column="sentence", label_column="lable")
    assert "no column 'lable'" in message and "did you mean 'label'" in message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert "is empty" in _error(ConfigError, path)
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("text,label\n", encoding="utf-8")
    assert "is empty" in _error(ConfigError, csv_path)


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n', encoding="utf-8")
    message = _error(ConfigError, path)
    assert f"{path}, line 3, column 24: malformed JSON" in message
    path.write_text('{"text": "a", "label": "x"}\n["b", "y"]\n', encoding="utf-8")
    assert "line 2: expected a JSON object, got list" in _error(ConfigError, path)


def test_unicode_line_separator_inside_a_string_is_not_a_line_break(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    rows = [{"text": "one\u2028two\x85three", "label": "a"}, {"text": "b", "label": "b"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = load_task(path, dev_split_fraction=0.5)
    assert "one\u2028two\x85three" in {e.text for e in task.train + task.dev}


def test_missing_label_on_a_row(tmp_path: Path, write_jsonl) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": None}])
    message = _error(ConfigError, path)
    assert "line 2: no label in column 'label'" in message
    write_jsonl(path, [{"text": "a", "label": "x"}, {"text": "b"}])
    assert "line 2: no label" in _error(ConfigError, path)
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("text,label\na,x\nb,\n", encoding="utf-8")
    assert f"{csv_path}, line 3: no label" in _error(ConfigError, csv_path)


def test_unknown_label_in_dev(tmp_path: Path, write_jsonl) -> None:
    write_jsonl(tmp_path / "train.jsonl", SENTIMENT)
    write_jsonl(
        tmp_path / "dev.jsonl", [{"text": "a", "label": "positive"}, {"text": "b", "label": "postive"}]
    )
    message = _error(ConfigError, tmp_path)
    assert "dev.jsonl, line 2: label 'postive'" in message
    assert "did you mean 'positive'" in message and "does not occur in the training data" in message


def test_unknown_label_with_given_labels(tmp_path: Path, write_jsonl) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", SENTIMENT)
    message = _error(ConfigError, path, labels=["positive", "neutral"])
    assert "label 'negative' is not one of the labels" in message and "add it to labels=" in message


def test_label_type_mismatches(tmp_path: Path, write_jsonl) -> None:
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "one"}])
    assert "labels mix strings" in _error(ConfigError, mixed)
    floats = write_jsonl(tmp_path / "f.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": 1.5}])
    assert "kind='regression'" in _error(ConfigError, floats, kind="classification")
    words = write_jsonl(tmp_path / "w.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    assert re.search(
        r"line [12]: label '[xy]' is not a number", _error(ConfigError, words, kind="regression")
    )
    lists = write_jsonl(tmp_path / "l.jsonl", [{"text": "a", "label": ["x"]}, {"text": "b", "label": ["y"]}])
    assert "kind='multilabel'" in _error(ConfigError, lists, kind="classification")
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": 5, "label": "x"}, {"text": "b", "label": "y"}])
    assert "column 'text' must hold a string" in _error(ConfigError, text)


def test_multiple_choice_errors(tmp_path: Path, write_jsonl) -> None:
    bad_index = write_jsonl(
        tmp_path / "a.jsonl",
        [{"text": "q", "choices": ["a", "b"], "label": 2}, {"text": "r", "choices": ["a"], "label": 0}],
    )
    assert "line 1: label 2 is not a choice index in 0..1" in _error(ConfigError, bad_index)
    message = _error(ConfigError, bad_index, labels=["only"])
    assert "labels= has 1 names but" in message and "has 2 choices" in message
    no_list = write_jsonl(tmp_path / "b.jsonl", [{"text": "q", "choices": "a b", "label": 0}] * 2)
    assert "must hold a non-empty list of strings" in _error(ConfigError, no_list)
    no_choices = write_jsonl(tmp_path / "c.jsonl", [{"text": "q", "label": 0}] * 2)
    message = _error(ConfigError, no_choices, kind="multiple_choice")
    assert "no column 'choices'" in message and "choices_column=" in message


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("text,label\na,x\nb,c,y\n", encoding="utf-8")
    assert f"{path}, line 3: 3 field(s) but the header has 2" in _error(ConfigError, path)


def test_unsupported_suffix_and_bad_utf8(tmp_path: Path) -> None:
    text = tmp_path / "x.txt"
    text.write_text("hello\n", encoding="utf-8")
    assert "unsupported data file type '.txt'" in _error(ConfigError, text)
    binary = tmp_path / "x.jsonl"
    binary.write_bytes(b'{"text": "a", "label": "x"}\n{"text": "\xff"}\n')
    assert "line 2: not valid UTF-8" in _error(ConfigError, binary)


def test_directory_problems(tmp_path: Path, write_jsonl) -> None:
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    message = _error(ConfigError, tmp_path)
    assert "has no train.jsonl, train.csv or train.tsv" in message and "notes.md" in message
    write_jsonl(tmp_path / "train.jsonl", SENTIMENT)
    write_jsonl(tmp_path / "dev.jsonl", SENTIMENT)
    write_jsonl(tmp_path / "validation.jsonl", SENTIMENT)
    assert "several files for one split: dev.jsonl, validation.jsonl" in _error(ConfigError, tmp_path)
    (tmp_path / "validation.jsonl").unlink()
    (tmp_path / "task.json").write_text('{"kind": "clasification"}', encoding="utf-8")
    message = _error(ConfigError, tmp_path)
    assert (
        "task.json: unknown task kind 'clasification'" in message
        and "did you mean 'classification'" in message
    )
    (tmp_path / "task.json").write_text('{"kind": \n "classification",}', encoding="utf-8")
    assert "task.json, line 2, column 19: malformed JSON" in _error(ConfigError, tmp_path)
    (tmp_path / "task.json").write_text('{"sizes": {"train": 5, "dev": 4}}', encoding="utf-8")
    message = _error(AdapterFileError, tmp_path)
    assert "train.jsonl has 4 rows but" in message and "says train has 5" in message


def test_directory_without_dev_is_split(tmp_path: Path, write_jsonl) -> None:
    write_jsonl(tmp_path / "train.jsonl", SENTIMENT * 5)
    task = load_task(tmp_path, dev_split_fraction=0.25)
    assert (len(task.train), len(task.dev)) == (15, 5)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.1"])
def test_bad_dev_split_fraction(tmp_path: Path, write_jsonl, fraction) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", SENTIMENT)
    assert "dev_split_fraction must be a number strictly between 0 and 1" in _error(
        ConfigError, path, dev_split_fraction=fraction
    )


def test_too_few_rows_to_split(tmp_path: Path, write_jsonl) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", SENTIMENT[:1])
    assert "cannot split 1 row(s)" in _error(ConfigError, path)


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    assert "does not exist" in _error(ConfigError, tmp_path / "nope")
    assert "does not exist" in _error(ConfigError, "data.jsonl")


def test_bad_kind_argument(tmp_path: Path, write_jsonl) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", SENTIMENT)
    assert "did you mean 'regression'" in _error(ConfigError, path, kind="regresion")


# ---- names and the shared data directory ------------------------------------------------------------------------
def test_named_sets_come_from_the_shared_directory(tmp_path: Path, write_jsonl, monkeypatch) -> None:
    write_jsonl(tmp_path / "shared" / "toy" / "train.jsonl", SENTIMENT)
    write_jsonl(tmp_path / "shared" / "toy" / "dev.jsonl", SENTIMENT)
    (tmp_path / "shared" / "not_a_task").mkdir()
    monkeypatch.setenv("ADAPTERHUB_SHARED_DATA", str(tmp_path / "shared"))
    assert shared_data_dir() == tmp_path / "shared"
    assert shared_task_names() == ("toy",)
    assert load_task("toy").name == "toy"
    message = _error(ConfigError, "tyo")
    assert "did you mean 'toy'" in message and "known names: rotten_tomatoes, toy" in message


def test_shared_data_dir_walks_up(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("ADAPTERHUB_SHARED_DATA", raising=False)
    checkout = tmp_path / "main" / "src" / "pkg"
    checkout.mkdir(parents=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(data_paths, "_start_points", lambda: iter([checkout]))
    assert shared_data_dir() == tmp_path / "shared" / "data"
    monkeypatch.setattr(data_paths, "_start_points", lambda: iter([Path("/")]))
    assert shared_data_dir() is None
    assert shared_task_names() == ()


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("name", "kind", "num_labels"),
    [
        ("presuppositions_nli", "classification", 3),
        ("social_iqa", "multiple_choice", 3),
        ("fever", "classification", 2),
    ],
)
def test_real_shared_sets_load(name: str, kind: str, num_labels: int, monkeypatch) -> None:
    monkeypatch.delenv("ADAPTERHUB_SHARED_DATA", raising=False)
    root = shared_data_dir()
    if root is None or name not in shared_task_names(root):
        pytest.skip("../shared/data is not beside this checkout")
    task = load_task(name)
    info = json.loads((root / name / "task.json").read_text(encoding="utf-8"))
    assert task.kind == kind and task.num_labels == num_labels
    assert (len(task.train), len(task.dev)) == (info["sizes"]["train"], info["sizes"]["dev"])
