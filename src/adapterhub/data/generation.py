"""Rows of a ``generation`` task: conversations read from ``{"prompt", "response"}`` or ``{"messages"}`` rows,
with the checks that make a bad row fail with its file and line.

Two row shapes are read (JSON lines, CSV/TSV, or HuggingFace rows alike):

* ``{"prompt": "...", "response": "..."}``, optionally with ``"system": "..."``, which becomes
  ``[system?, user, assistant]``;
* ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}`` in the
  OpenAI chat format (roles ``system``, ``user``, ``assistant``; in a CSV/TSV cell, as JSON). The conversation
  must end with a non-empty assistant turn: the response to learn and to evaluate.

Either shape may add ``"answers": ["...", ...]``, the answers allowed for that row (multiple choice turned into
instructions writes the row's choices there); the response must be one of them. They are kept as the example's
``choices`` and score the row when the task has no task-wide answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from adapterhub.data.tables import Row, Table
from adapterhub.data.task import ROLES, Example, Message
from adapterhub.errors import ConfigError, did_you_mean

MESSAGES_COLUMN = "messages"
PROMPT_COLUMN = "prompt"
RESPONSE_COLUMN = "response"
ANSWERS_COLUMN = "answers"
SYSTEM_COLUMN = "system"
_SHAPES = (
    '{"prompt": "...", "response": "..."} (optionally with "system") or '
    '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
)


def looks_like_generation(header: Sequence[str], label_column: str) -> bool:
    """Whether a table with these columns is a generation task: it has no ``label_column`` but has a
    ``messages``, ``prompt`` or ``response`` column."""
    return label_column not in header and any(
        column in header for column in (MESSAGES_COLUMN, PROMPT_COLUMN, RESPONSE_COLUMN)
    )


def generation_examples(table: Table) -> tuple[Example, ...]:
    """Every row of ``table`` as a generation :class:`Example` (see the module docstring for the row shapes).

    Raises :class:`ConfigError` naming the file and line for a row with neither shape (or both), a value of the
    wrong type, ``messages`` that is not a non-empty list of ``{"role", "content"}`` objects with string
    values, an unknown role (naming the valid ones), no assistant turn, a conversation that does not end with
    the assistant's response, or an empty response.
    """
    return tuple(_example(table, row) for row in table.rows)


def _example(table: Table, row: Row) -> Example:
    where = table.where(row)
    values = row.values
    has_messages = values.get(MESSAGES_COLUMN) is not None
    has_pair = values.get(PROMPT_COLUMN) is not None or values.get(RESPONSE_COLUMN) is not None
    if has_messages and has_pair:
        raise ConfigError(
            f"{where}: the row has both {MESSAGES_COLUMN!r} and {PROMPT_COLUMN!r}/{RESPONSE_COLUMN!r}; "
            f"give one of the two shapes: {_SHAPES}"
        )
    if has_messages:
        messages = _messages(where, values[MESSAGES_COLUMN], table.from_text)
    elif has_pair:
        messages = _prompt_response(where, values)
    else:
        present = ", ".join(values) or "(none)"
        raise ConfigError(
            f"{where}: a generation row needs {PROMPT_COLUMN!r} and {RESPONSE_COLUMN!r}, or {MESSAGES_COLUMN!r}; "
            f"its columns are: {present}. Write each row as {_SHAPES}"
        )
    _check_conversation(where, messages)
    prompt = messages[-2]["content"] if len(messages) > 1 else ""
    answers = _row_answers(where, values.get(ANSWERS_COLUMN), table.from_text, messages[-1]["content"])
    return Example(prompt, choices=answers, messages=tuple(messages))


def _row_answers(where: str, value: Any, from_text: bool, response: str) -> tuple[str, ...] | None:
    """A row's own allowed answers: a list of distinct non-empty strings holding the response (JSON in a
    CSV/TSV cell), or ``None`` when the row gives none."""
    if value is None:
        return None
    if from_text and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where}: {ANSWERS_COLUMN!r} is not valid JSON ({error.msg})") from None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a.strip() for a in value):
        raise ConfigError(
            f"{where}: {ANSWERS_COLUMN!r} must be a non-empty list of non-empty strings (the answers allowed "
            f"for this row), got {value!r}"
        )
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: {ANSWERS_COLUMN!r} repeats an answer: {value!r}")
    if response not in value:
        raise ConfigError(
            f"{where}: the response {response!r} is not one of the row's {ANSWERS_COLUMN!r} {value!r}; add it "
            "or correct the response"
        )
    return tuple(value)


def _string(where: str, value: Any, what: str) -> str:
    if not isinstance(value, str):
        got = "nothing (null)" if value is None else f"{type(value).__name__} {value!r}"[:80]
        raise ConfigError(f"{where}: {what} must be a string, got {got}; fix the row")
    return value


def _prompt_response(where: str, values: Any) -> list[Message]:
    for column in (PROMPT_COLUMN, RESPONSE_COLUMN):
        if values.get(column) is None:
            other = RESPONSE_COLUMN if column == PROMPT_COLUMN else PROMPT_COLUMN
            raise ConfigError(
                f"{where}: the row has {other!r} but no {column!r}; a prompt/response row needs both "
                f"(or write the conversation as {MESSAGES_COLUMN!r})"
            )
    messages: list[Message] = []
    system = values.get(SYSTEM_COLUMN)
    if system is not None and system != "":
        messages.append(Message(role="system", content=_string(where, system, repr(SYSTEM_COLUMN))))
    messages.append(Message(role="user", content=_string(where, values[PROMPT_COLUMN], repr(PROMPT_COLUMN))))
    response = _string(where, values[RESPONSE_COLUMN], repr(RESPONSE_COLUMN))
    if not response.strip():
        raise ConfigError(f"{where}: empty {RESPONSE_COLUMN!r}; give the row its response or remove it")
    messages.append(Message(role="assistant", content=response))
    return messages


def _messages(where: str, value: Any, from_text: bool) -> list[Message]:
    if from_text and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(
                f"{where}: column {MESSAGES_COLUMN!r} must hold a JSON list such as "
                '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]; fix the row'
            ) from None
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(
            f"{where}: {MESSAGES_COLUMN!r} must be a non-empty list of "
            f'{{"role": ..., "content": ...}} objects, got {type(value).__name__} {value!r}'[:300]
            + "; fix the row"
        )
    messages: list[Message] = []
    for position, item in enumerate(value, start=1):
        at = f"{where}, message {position}"
        if not isinstance(item, dict):
            raise ConfigError(
                f"{at}: each message must be an object such as "
                f'{{"role": "user", "content": "..."}}, got {type(item).__name__}; fix the row'
            )
        extra = sorted(key for key, v in item.items() if key not in ("role", "content") and v is not None)
        if extra:
            raise ConfigError(
                f"{at}: unsupported key(s) {', '.join(map(repr, extra))}; a message has only 'role' and "
                "'content' (text turns: tool calls and names are not supported)"
            )
        for key in ("role", "content"):
            if key not in item or item[key] is None:
                raise ConfigError(f"{at}: no {key!r}; each message needs a 'role' and a 'content' string")
        role = _string(at, item["role"], "'role'")
        if role not in ROLES:
            raise ConfigError(
                f"{at}: unknown role {role!r}{did_you_mean(role, ROLES)}; the roles are: {', '.join(ROLES)}"
            )
        messages.append(Message(role=role, content=_string(at, item["content"], "'content'")))
    return messages


def _check_conversation(where: str, messages: list[Message]) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise ConfigError(
            f"{where}: the conversation has no assistant turn; end it with "
            '{"role": "assistant", "content": "<the response>"}'
        )
    if messages[-1]["role"] != "assistant":
        raise ConfigError(
            f"{where}: the conversation ends with a {messages[-1]['role']} turn; the last message must be the "
            "assistant's response (remove the trailing turns or add the response)"
        )
    for position, message in enumerate(messages, start=1):
        if message["role"] == "assistant" and not message["content"].strip():
            raise ConfigError(
                f"{where}, message {position}: empty assistant response; give every assistant turn its text "
                "or remove the row"
            )
