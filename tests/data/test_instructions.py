"""The converter from labelled tasks to instruction (generation) tasks: ``instruction_task``, ``write_instructions``
and ``adapterhub data instructions``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapterhub.cli import main
from adapterhub.data import Example, TaskData, load_task, shared_data_dir
from adapterhub.data.instructions import check_template, instruction_task, write_instructions
from adapterhub.errors import ConfigError

Writer = Callable[[Path, Any], Path]
SRC = Path(__file__).resolve().parents[2] / "src"


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture
def sentiment(tmp_path: Path, write_jsonl: Writer) -> Path:
    folder = tmp_path / "sentiment"
    write_jsonl(
        folder / "train.jsonl",
        [
            {"text": "a great film", "label": "positive"},
            {"text": "dull plot", "label": "negative"},
            {"text": "fun", "label": "positive"},
        ],
    )
    write_jsonl(folder / "dev.jsonl", [{"text": "awful", "label": "negative"}])
    (folder / "task.json").write_text(json.dumps({"kind": "classification"}), encoding="utf-8")
    return folder


@pytest.fixture
def questions(tmp_path: Path, write_jsonl: Writer) -> Path:
    folder = tmp_path / "questions"
    write_jsonl(
        folder / "train.jsonl",
        [
            {"text": "Who went home?", "choices": ["the cat", "the dog", "nobody"], "label": 1},
            {"text": "What did she do?", "choices": ["run", "walk"], "label": "walk"},
        ],
    )
    write_jsonl(folder / "dev.jsonl", [{"text": "Yes or no?", "choices": ["yes", "no"], "label": 0}])
    return folder


def test_classification_with_the_default_template(sentiment: Path) -> None:
    task = instruction_task(load_task(sentiment))
    assert task.kind == "generation" and task.answers == ("negative", "positive")
    assert task.train[0].messages == (
        _user("Classify the text. Answer with one of: negative, positive.\n\nText: a great film"),
        _assistant("positive"),
    )
    assert [e.messages[-1]["content"] for e in task.dev if e.messages] == ["negative"]


def test_multiple_choice_lists_numbered_choices_and_answers_with_the_choice_text(questions: Path) -> None:
    task = instruction_task(load_task(questions))
    assert task.kind == "generation" and task.answers == ()  # the allowed answers differ per row
    assert task.train[0].messages == (
        _user(
            "Choose the right answer. Answer with the text of one of the choices.\n\n"
            "Question: Who went home?\n\nChoices:\n1. the cat\n2. the dog\n3. nobody"
        ),
        _assistant("the dog"),
    )
    assert task.train[1].messages is not None and task.train[1].messages[-1] == _assistant("walk")
    assert [e.choices for e in task.train] == [("the cat", "the dog", "nobody"), ("run", "walk")]


def test_multiple_choice_rows_keep_their_answers_through_the_written_folder(
    questions: Path, tmp_path: Path
) -> None:
    write_instructions(questions, tmp_path / "out")
    first = json.loads((tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["answers"] == ["the cat", "the dog", "nobody"]
    loaded = load_task(tmp_path / "out")
    assert loaded.answers == () and [e.choices for e in loaded.dev] == [("yes", "no")]
    assert loaded.train == instruction_task(load_task(questions)).train


def test_repeated_choices_are_allowed_answers_once(tmp_path: Path, write_jsonl: Writer) -> None:
    folder = tmp_path / "dup"
    row = {"text": "Pick", "choices": ["same", "same", "other"], "label": 2}
    write_jsonl(folder / "train.jsonl", [row])
    write_jsonl(folder / "dev.jsonl", [row])
    write_instructions(folder, tmp_path / "out")
    assert load_task(tmp_path / "out").dev[0].choices == ("same", "other")


def test_template_placeholders(sentiment: Path, questions: Path) -> None:
    task = instruction_task(load_task(sentiment), "Review: {text}\nAnswers ({{one}}): {answers}")
    assert task.train[1].messages is not None
    assert task.train[1].messages[0] == _user("Review: dull plot\nAnswers ({one}): negative, positive")
    mc = instruction_task(load_task(questions), "{text} [{answers}]\n{choices}")
    assert mc.dev[0].messages is not None
    assert mc.dev[0].messages[0] == _user("Yes or no? [yes, no]\n1. yes\n2. no")


def test_text_pair_goes_on_its_own_line() -> None:
    task = TaskData("nli", "classification", ("no", "yes"), (Example("premise", "hypothesis", label=1),))
    converted = instruction_task(task, "{text}")
    assert converted.train[0].messages == (_user("premise\nhypothesis"), _assistant("yes"))


@pytest.mark.parametrize(
    ("template", "kind", "message"),
    [
        ("Answer: {answer}", "classification", r"unknown placeholder \{answer\}.*did you mean 'answers'"),
        (
            "{text} {choices}",
            "classification",
            r"unknown placeholder \{choices\}.*may use \{text\}, \{answers\}",
        ),
        ("{text} {}", "classification", r"unknown placeholder \{\} \(an empty placeholder\)"),
        ("{text} {0}", "multiple_choice", r"unknown placeholder \{0\}"),
        ("Answer with {answers}", "classification", r"no \{text\} placeholder"),
        ("{text} }", "classification", r"malformed template"),
        ("{text", "classification", r"malformed template"),
        ("{text}", "regression", r"a regression task cannot be turned into instructions"),
    ],
)
def test_template_errors(template: str, kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_template(template, kind)


def test_check_template_returns_the_placeholders() -> None:
    assert check_template("{choices} {text}", "multiple_choice") == ("choices", "text")


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            TaskData("r", "regression", (), (Example("x", label=0.5),)),
            r"a regression task \('r'\) cannot be turned",
        ),
        (
            TaskData("m", "multilabel", ("a", "b"), (Example("x", label=(0, 1)),)),
            r"only classification and multiple_choice",
        ),
        (
            TaskData("g", "generation", (), (Example("x", messages=(_user("x"), _assistant("y"))),)),
            r"a generation task .* cannot be turned",
        ),
        (
            TaskData("n", "classification", ("0", "1"), (Example("x", label=1),)),
            r'numbers without names.*"labels"',
        ),
        (TaskData("u", "classification", ("a", "b"), (), (Example("x"),)), r"dev example 0 has no label"),
    ],
)
def test_refused_tasks(task: TaskData, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        instruction_task(task)


def test_number_labels_with_names_in_task_json_convert(tmp_path: Path, write_jsonl: Writer) -> None:
    folder = tmp_path / "numbers"
    write_jsonl(folder / "train.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    with pytest.raises(ConfigError, match='add "labels"'):
        write_instructions(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written when the conversion fails
    (folder / "task.json").write_text(json.dumps({"labels": ["negative", "positive"]}), encoding="utf-8")
    written = write_instructions(folder, tmp_path / "out")
    assert written.task.answers == ("negative", "positive")


def test_written_folder_round_trips_through_load_task(sentiment: Path, tmp_path: Path) -> None:
    written = write_instructions(sentiment, tmp_path / "out")
    assert written.rows == {"train": 3, "dev": 1}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dev.jsonl", "task.json", "train.jsonl"]
    info = json.loads((tmp_path / "out" / "task.json").read_text(encoding="utf-8"))
    assert info["kind"] == "generation" and info["answers"] == ["negative", "positive"]
    assert info["converted_from"]["kind"] == "classification" and info["sizes"] == {"train": 3, "dev": 1}
    loaded = load_task(tmp_path / "out")
    assert loaded.kind == "generation" and loaded.answers == ("negative", "positive")
    assert loaded.train == written.task.train and loaded.dev == written.task.dev
    assert [e.messages for e in loaded.train] == [
        e.messages for e in instruction_task(load_task(sentiment)).train
    ]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary folder left beside the output


def test_no_overwrite_unless_asked(sentiment: Path, questions: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_instructions(sentiment, out)  # an empty folder is fine
    with pytest.raises(ConfigError, match=r"is not empty; pass --overwrite"):
        write_instructions(questions, out)
    assert load_task(out).answers == ("negative", "positive")  # untouched
    write_instructions(questions, out, overwrite=True)
    assert load_task(out).answers == () and len(load_task(out).train) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "questions", "sentiment"]


def test_bad_destinations(sentiment: Path, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        write_instructions(sentiment, tmp_path / "file.txt")
    with pytest.raises(ConfigError, match="is the source itself"):
        write_instructions(sentiment, sentiment, overwrite=True)


def test_cli_end_to_end(sentiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-out"
    assert (
        main(
            [
                "data",
                "instructions",
                str(sentiment),
                str(out),
                "--template",
                r"Sentiment of: {text}\nOne of {answers}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "train: 3 rows" in printed and "dev: 1 rows" in printed and "answers: negative, positive" in printed
    )
    task = load_task(out)
    assert task.train[0].messages == (
        _user("Sentiment of: a great film\nOne of negative, positive"),
        _assistant("positive"),
    )
    assert main(["data", "instructions", str(sentiment), str(out)]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["data", "instructions", str(sentiment), str(tmp_path / "new"), "--template", "{label}"]) == 2
    assert "unknown placeholder {label}" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert main(["data", "instructions", str(sentiment), str(out), "--overwrite"]) == 0


def test_cli_refuses_other_kinds(
    tmp_path: Path, write_jsonl: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = write_jsonl(tmp_path / "scores.jsonl", [{"text": f"t{i}", "label": i / 2} for i in range(4)])
    assert main(["data", "instructions", str(scores), str(tmp_path / "out")]) == 2
    assert "a regression task ('scores') cannot be turned into instructions" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_runs_without_torch(sentiment: Path, tmp_path: Path) -> None:
    probe = (
        "import sys; from adapterhub.cli import main; "
        f"code = main(['data', 'instructions', {str(sentiment)!r}, {str(tmp_path / 'out')!r}]); "
        "assert code == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "train: 3 rows" in result.stdout


def test_real_shared_sets_convert(tmp_path: Path) -> None:
    shared = shared_data_dir()
    if (
        shared is None
        or not (shared / "fever" / "train.jsonl").is_file()
        or not (shared / "social_iqa").is_dir()
    ):
        pytest.skip("the shared data sets (fever, social_iqa) are not present beside this checkout")
    written = write_instructions(shared / "fever", tmp_path / "fever")
    task = load_task(tmp_path / "fever")
    assert task.kind == "generation" and set(task.answers) == {"true", "false"}
    assert len(task.train) == written.rows["train"] == 5726 and len(task.dev) == 800
    assert {e.messages[-1]["content"] for e in task.dev if e.messages} == {"true", "false"}
    assert all(
        e.messages and "Answer with one of: false, true." in e.messages[0]["content"] for e in task.dev
    )
    choice = load_task(write_instructions(shared / "social_iqa", tmp_path / "siqa").directory)
    example = choice.dev[0]
    assert example.messages is not None and "\n1. " in example.messages[0]["content"]
    assert example.messages[-1]["content"] in example.messages[0]["content"]


def test_named_rotten_tomatoes_converts(tmp_path: Path) -> None:
    shared = shared_data_dir()
    if shared is None or not (shared / "rotten_tomatoes" / "train.jsonl").is_file():
        pytest.skip(
            "the shared rotten_tomatoes set is not present (a fresh clone fetches it with scripts/setup.sh)"
        )
    written = write_instructions("rotten_tomatoes", tmp_path / "rt")
    assert written.rows == {"train": 11452, "dev": 1300}
    assert load_task(tmp_path / "rt").answers == ("negative", "positive")
