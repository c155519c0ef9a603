"""The generation kind: conversations from prompt/response and messages rows, task.json answers, and every
bad row's error."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapterhub.data import KINDS, Example, TaskData, load_task
from adapterhub.errors import ConfigError

Writer = Callable[[Path, Any], Path]

PAIRS = [
    {"prompt": "Is the movie good?", "response": "yes"},
    {"prompt": "Is the plot dull?", "response": "no", "system": "Answer yes or no."},
]
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "a cat or a dog?"},
            {"role": "assistant", "content": "a dog"},
        ]
    },
    {"messages": [{"role": "user", "content": "say yes"}, {"role": "assistant", "content": "yes"}]},
]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_generation_is_a_kind() -> None:
    assert "generation" in KINDS


def test_folder_of_prompt_response_rows(tmp_path: Path, write_jsonl: Writer) -> None:
    write_jsonl(tmp_path / "qa" / "train.jsonl", PAIRS)
    write_jsonl(tmp_path / "qa" / "dev.jsonl", PAIRS[:1])
    (tmp_path / "qa" / "task.json").write_text(json.dumps({"kind": "generation", "answers": ["yes", "no"]}))
    task = load_task(tmp_path / "qa")
    assert task.kind == "generation" and task.labels == () and task.answers == ("yes", "no")
    assert task.train[0].messages == (_user("Is the movie good?"), _assistant("yes"))
    assert task.train[1].messages == (
        {"role": "system", "content": "Answer yes or no."},
        _user("Is the plot dull?"),
        _assistant("no"),
    )
    assert task.train[0].text == "Is the movie good?" and task.train[0].label is None
    assert len(task.dev) == 1
    assert task.subset(train=1).answers == ("yes", "no")  # a subset keeps the answers
    assert "answers=('yes', 'no')" in repr(task)


def test_folder_of_messages_rows_is_inferred_without_task_json(tmp_path: Path, write_jsonl: Writer) -> None:
    write_jsonl(tmp_path / "chat" / "train.jsonl", CHATS)
    write_jsonl(tmp_path / "chat" / "dev.jsonl", CHATS[1:])
    task = load_task(tmp_path / "chat")
    assert task.kind == "generation" and task.answers == ()
    assert task.train[0].messages == tuple(CHATS[0]["messages"])
    assert task.train[0].text == "a cat or a dog?"  # the turn before the final response
    assert task.dev[0].messages == (_user("say yes"), _assistant("yes"))


def test_single_file_is_split(tmp_path: Path, write_jsonl: Writer) -> None:
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(10)]
    task = load_task(write_jsonl(tmp_path / "pairs.jsonl", rows), kind="generation")
    assert task.kind == "generation" and len(task.train) == 9 and len(task.dev) == 1
    seen = {e.messages[-1]["content"] for e in (*task.train, *task.dev) if e.messages}
    assert seen == {f"a{i}" for i in range(10)}


def test_mixed_shapes_in_one_file(tmp_path: Path, write_jsonl: Writer) -> None:
    task = load_task(write_jsonl(tmp_path / "mixed.jsonl", [*PAIRS, *CHATS]), dev_split_fraction=0.5)
    assert task.kind == "generation" and len(task.train) + len(task.dev) == 4


def test_csv_with_a_messages_cell(tmp_path: Path) -> None:
    path = tmp_path / "chat.csv"
    cell = json.dumps([_user("hi"), _assistant("hello")]).replace('"', '""')
    path.write_text(f'messages\n"{cell}"\n"{cell}"\n', encoding="utf-8")
    task = load_task(path)
    assert task.kind == "generation" and task.train[0].messages == (_user("hi"), _assistant("hello"))


def test_saved_hf_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="the optional 'datasets' package is not installed")
    conversation = [_user("hi"), _assistant("hello")]
    dataset = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"messages": [conversation, conversation]}),
        validation=datasets.Dataset.from_dict({"messages": [conversation]}),
    )
    dataset.save_to_disk(str(tmp_path / "chat"))
    task = load_task(tmp_path / "chat")
    assert task.kind == "generation" and task.dev[0].messages == tuple(conversation)


def test_messages_are_copied_and_examples_stay_hashable() -> None:
    turns = [_user("q"), _assistant("a")]
    example = Example("q", messages=turns)  # type: ignore[arg-type]
    turns[0]["content"] = "changed"
    assert example.messages is not None and example.messages[0]["content"] == "q"
    assert hash(example) == hash(Example("q", messages=(_user("q"), _assistant("a"))))


def test_existing_kinds_refuse_answers_and_messages(tmp_path: Path, write_jsonl: Writer) -> None:
    write_jsonl(
        tmp_path / "cls" / "train.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    )
    (tmp_path / "cls" / "task.json").write_text(json.dumps({"answers": ["pos", "neg"]}))
    with pytest.raises(ConfigError, match=r"answers .* are for generation tasks.*classification"):
        load_task(tmp_path / "cls")
    with pytest.raises(ConfigError, match="only generation examples hold messages"):
        TaskData("t", "classification", ("a",), (Example("x", label=0, messages=(_user("x"),)),))
    with pytest.raises(ConfigError, match="needs messages"):
        TaskData("t", "generation", (), (Example("x"),))
    with pytest.raises(ConfigError, match="has no label names"):
        TaskData("t", "generation", ("a",))
    with pytest.raises(ConfigError, match="answers must be unique"):
        TaskData("t", "generation", (), answers=("yes", "yes"))


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"kind": "generation", "answers": "yes"}, r'"answers" must be a list of the allowed answers'),
        ({"kind": "generation", "answers": ["yes", ""]}, r'"answers" must be a list'),
        ({"kind": "generation", "labels": ["yes"]}, r'generation task has no label names.*"answers"'),
    ],
)
def test_bad_task_json(tmp_path: Path, write_jsonl: Writer, info: dict[str, Any], message: str) -> None:
    write_jsonl(tmp_path / "t" / "train.jsonl", PAIRS)
    (tmp_path / "t" / "task.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match=message):
        load_task(tmp_path / "t")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "hello"}, r"needs 'prompt' and 'response', or 'messages'; its columns are: text"),
        ({"prompt": "q"}, r"has 'prompt' but no 'response'"),
        ({"response": "a"}, r"has 'response' but no 'prompt'"),
        ({"prompt": "q", "response": "  "}, r"empty 'response'"),
        ({"prompt": 3, "response": "a"}, r"'prompt' must be a string, got int 3"),
        ({"prompt": "q", "response": "a", "messages": [_user("q")]}, r"has both 'messages' and 'prompt'"),
        ({"messages": "hi"}, r"'messages' must be a non-empty list"),
        ({"messages": []}, r"'messages' must be a non-empty list"),
        ({"messages": ["hi"]}, r"message 1: each message must be an object"),
        ({"messages": [{"role": "user"}]}, r"message 1: no 'content'"),
        ({"messages": [{"role": "user", "content": 5}]}, r"message 1: 'content' must be a string, got int 5"),
        ({"messages": [{"role": 1, "content": "x"}]}, r"message 1: 'role' must be a string"),
        (
            {"messages": [_user("q"), {"role": "asistant", "content": "a"}]},
            r"message 2: unknown role 'asistant'.*did you mean 'assistant'.*the roles are: system, user, assistant",
        ),
        (
            {"messages": [_user("q"), {"role": "tool", "content": "a"}]},
            r"the roles are: system, user, assistant",
        ),
        ({"messages": [{**_user("q"), "name": "bob"}, _assistant("a")]}, r"unsupported key\(s\) 'name'"),
        ({"messages": [_user("q")]}, r"has no assistant turn"),
        ({"messages": [_user("q"), _assistant("a"), _user("more")]}, r"ends with a user turn"),
        ({"messages": [_user("q"), _assistant(" ")]}, r"message 2: empty assistant response"),
        (
            {"messages": [_user("q"), _assistant(""), _user("q"), _assistant("a")]},
            r"message 2: empty assistant",
        ),
        ({"prompt": "q", "response": "a", "answers": "a"}, r"'answers' must be a non-empty list"),
        ({"prompt": "q", "response": "a", "answers": []}, r"'answers' must be a non-empty list"),
        ({"prompt": "q", "response": "a", "answers": ["a", "a"]}, r"'answers' repeats an answer"),
        (
            {"prompt": "q", "response": "a", "answers": ["b", "c"]},
            r"the response 'a' is not one of the row's",
        ),
    ],
)
def test_bad_rows_name_the_file_and_line(
    tmp_path: Path, write_jsonl: Writer, row: dict[str, Any], message: str
) -> None:
    path = write_jsonl(tmp_path / "t" / "train.jsonl", [PAIRS[0], row])
    (tmp_path / "t" / "task.json").write_text(json.dumps({"kind": "generation"}))
    with pytest.raises(ConfigError, match=message) as caught:
        load_task(tmp_path / "t")
    assert f"{path}, line 2" in str(caught.value)


def test_null_extra_keys_are_ignored(tmp_path: Path, write_jsonl: Writer) -> None:
    # HuggingFace fills absent fields of a struct with None (e.g. "name" or "tool_calls")
    row = {"messages": [{**_user("q"), "name": None}, {**_assistant("a"), "tool_calls": None}]}
    task = load_task(write_jsonl(tmp_path / "t.jsonl", [row, row]))
    assert task.train[0].messages == (_user("q"), _assistant("a"))


def test_kind_generation_on_classification_rows_is_a_clear_error(tmp_path: Path, write_jsonl: Writer) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "good", "label": "pos"}] * 4)
    with pytest.raises(ConfigError, match=r"a generation row needs 'prompt' and 'response', or 'messages'"):
        load_task(path, kind="generation")


def test_encode_refuses_generation_examples(tokenizer: Any) -> None:
    from adapterhub.data import encode

    examples = [Example("q", messages=(_user("q"), _assistant("a")))]
    with pytest.raises(ConfigError, match="chat template"):
        encode(examples, tokenizer, kind="generation")
