"""Turn a request's inputs into token rows for the model, by the kind of head that will read them.

Inputs per head type:

- sequence heads (classification, regression, multi-label), tagging, no head (embeddings): each input is a text or a
  ``[text, pair]``; one row per input;
- extractive QA: each input is ``[question, context]``; the answer span is read from the context's tokens;
- multiple choice: each input is ``{"context": str, "choices": [str, ...]}``; one row per choice;
- causal LM (generation): each input is a prompt text.

A row longer than the model takes raises ``InputTooLongError`` (HTTP 422) unless the request asks to truncate.
Tokenisation runs on the event loop thread only (a fast tokenizer must not be shared across threads while its
truncation settings change).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adapterhub.errors import AdapterHubError, ConfigError

_OFFSET_MODELS = ("roberta", "xlm-roberta")  # position ids start after the padding index


class InputTooLongError(AdapterHubError):
    """A row has more tokens than the model takes, and the request did not ask to truncate (HTTP 422)."""


@dataclass
class Encoded:
    """A request's rows: ``input_ids`` (and ``token_type_ids``) per row, unpadded; ``choices``: rows per example
    (multiple choice; None: one row per example); ``offsets`` / ``sequence_ids``: per row, for tagging and QA;
    ``contexts``: the text the offsets of segment 1 point into (QA), else the input text."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None = None
    choices: list[int] | None = None
    offsets: list[list[tuple[int, int]]] = field(default_factory=list)
    sequence_ids: list[list[int | None]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.input_ids)


def model_max_length(model: Any, tokenizer: Any) -> int | None:
    """The most tokens one row may have: the model's position embeddings (less RoBERTa's offset) and the
    tokenizer's own limit, whichever is smaller; None when neither says."""
    config = model.config
    limits = []
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions:
        offset = (
            (int(getattr(config, "pad_token_id", 0) or 0) + 1) if config.model_type in _OFFSET_MODELS else 0
        )
        limits.append(int(positions) - offset)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def _pair(item: Any, index: int) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, Sequence) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    raise ConfigError(f"inputs[{index}] must be a text or a [text, pair] list of two texts, got {item!r}.")


def _rows_for(
    head_type: str | None, inputs: Sequence[Any]
) -> tuple[list[tuple[str, str | None]], list[int] | None]:
    if head_type == "multiple_choice":
        rows, choices = [], []
        for i, item in enumerate(inputs):
            if not (
                isinstance(item, dict)
                and isinstance(item.get("context"), str)
                and isinstance(item.get("choices"), list)
                and item["choices"]
                and all(isinstance(c, str) for c in item["choices"])
            ):
                raise ConfigError(
                    f'inputs[{i}] of a multiple-choice adapter must be {{"context": text, "choices": [text, ...]}}.'
                )
            rows += [(item["context"], choice) for choice in item["choices"]]
            choices.append(len(item["choices"]))
        return rows, choices
    rows = [_pair(item, i) for i, item in enumerate(inputs)]
    if head_type == "question_answering" and any(pair is None for _, pair in rows):
        raise ConfigError("Inputs of a question-answering adapter are [question, context] pairs.")
    return rows, None


def encode(
    tokenizer: Any,
    inputs: Sequence[Any],
    *,
    head_type: str | None,
    max_length: int | None,
    truncate: bool,
    add_special_tokens: bool = True,
) -> Encoded:
    """Tokenise ``inputs`` for a head of ``head_type`` (None: no head). Raises ``ConfigError`` for inputs of the
    wrong shape and ``InputTooLongError`` for a row over ``max_length`` without ``truncate``."""
    if not inputs:
        raise ConfigError("inputs is empty; send at least one input.")
    rows, choices = _rows_for(head_type, inputs)
    texts = [text for text, _ in rows]
    pairs = [pair for _, pair in rows]
    has_pairs = any(p is not None for p in pairs)
    if has_pairs and not all(p is not None for p in pairs):
        raise ConfigError("Mix of single texts and [text, pair] inputs in one request; send one kind.")
    options: dict[str, Any] = {"add_special_tokens": add_special_tokens}
    if truncate and max_length is not None:
        options.update(
            truncation="only_second" if head_type == "question_answering" else True, max_length=max_length
        )
    offsets_wanted = head_type in ("tagging", "question_answering") and getattr(tokenizer, "is_fast", False)
    encoding = tokenizer(
        texts, pairs if has_pairs else None, return_offsets_mapping=offsets_wanted, **options
    )
    ids: list[list[int]] = [list(row) for row in encoding["input_ids"]]
    if max_length is not None:
        for i, row in enumerate(ids):
            if len(row) > max_length:
                raise InputTooLongError(
                    f"inputs[{i}] has {len(row)} tokens; this model takes at most {max_length}. Shorten it or send "
                    '"truncate": true to cut it to the limit.'
                )
    out = Encoded(
        input_ids=ids,
        token_type_ids=[list(r) for r in encoding["token_type_ids"]]
        if "token_type_ids" in encoding
        else None,
        choices=choices,
        texts=[p if head_type == "question_answering" and p is not None else t for t, p in rows],
    )
    if offsets_wanted:
        out.offsets = [[tuple(o) for o in row] for row in encoding["offset_mapping"]]
        out.sequence_ids = [list(encoding.sequence_ids(i)) for i in range(len(ids))]
    if head_type == "tagging":
        out.tokens = [tokenizer.convert_ids_to_tokens(row) for row in ids]
        if not out.sequence_ids:
            special = set(getattr(tokenizer, "all_special_ids", []))
            out.sequence_ids = [[None if t in special else 0 for t in row] for row in ids]
    return out
