"""Training batches of a ``generation`` task: conversations tokenised with the model's chat template
(:mod:`adapterhub.data.chat`, loss on the assistant responses only by default), padded per batch.

Features are plain lists (``input_ids``, ``attention_mask``, ``labels``), so the length-grouped sampler of the
training loop groups them like any other task's rows. :func:`collate_chat` pads on the right with the tokenizer's
pad token, ``attention_mask`` 0 and ``labels`` -100 on padding. Padding is told apart by the attention mask only:
a chat model's pad token is often its end-of-turn token (SmolLM2), which also occurs in the rows as a real,
loss-carrying token.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.data import EncodedDataset
from adapterhub.data.chat import IGNORE_INDEX, encode_conversations
from adapterhub.data.task import Example
from adapterhub.errors import ConfigError


@dataclass(frozen=True)
class ChatData:
    """An encoded split and how many of its conversations were truncated to fit ``max_length``."""

    dataset: EncodedDataset
    truncated: int


def encode_chat(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    max_length: int,
    train_on_prompt: bool = False,
    last_turn_only: bool = False,
) -> ChatData:
    """Tokenise the conversations of generation ``examples`` (:func:`adapterhub.data.chat.encode_conversations`)
    into an :class:`EncodedDataset` of kind ``generation``; raises :class:`ConfigError` for an example without
    messages, bad messages or a tokenizer without a chat template."""
    conversations = []
    for index, example in enumerate(examples):
        if not example.messages:
            raise ConfigError(
                f"example {index} has no messages; a generation example holds its conversation."
            )
        conversations.append(example.messages)
    encoding = encode_conversations(
        tokenizer,
        conversations,
        max_length=max_length,
        train_on_prompt=train_on_prompt,
        last_turn_only=last_turn_only,
    )
    features = [
        {
            "input_ids": list(item.input_ids),
            "attention_mask": [1] * len(item.input_ids),
            "labels": list(item.labels),
        }
        for item in encoding.examples
    ]
    return ChatData(EncodedDataset(features, "generation"), encoding.truncated)


def report_truncated(split: str, data: ChatData, max_length: int, enabled: bool = True) -> None:
    """Say once (stderr) how many conversations of ``split`` were truncated; nothing is shortened silently."""
    if enabled and data.truncated:
        print(
            f"{split}: {data.truncated} of {len(data.dataset)} conversations were longer than --max-length "
            f"{max_length} and were truncated from the prompt side (raise --max-length to keep them whole)",
            file=sys.stderr,
        )


def padding_id(tokenizer: Any) -> int:
    """The id padding positions hold: the tokenizer's pad token, else its end-of-sequence token. Padding never
    carries loss or attention, so which id it is does not change results."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "eos_token_id", None)
    if pad_id is None:
        raise ConfigError(
            "the tokenizer has neither a pad nor an end-of-sequence token; set one, e.g. "
            "tokenizer.pad_token = tokenizer.eos_token"
        )
    return int(pad_id)


def collate_chat(items: Sequence[dict[str, Any]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Pad ``items`` (features of :func:`encode_chat`) on the right to the longest row:
    ``input_ids``, ``attention_mask`` and ``labels``, each (batch, seq) long; padding has attention 0 and label
    -100 (so it carries no loss whatever the pad id is)."""
    if not items:
        raise ConfigError("cannot collate an empty batch")
    pad_id = padding_id(tokenizer)
    width = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), width), int(pad_id), dtype=torch.long)  # (batch, seq)
    mask = torch.zeros((len(items), width), dtype=torch.long)  # (batch, seq)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)  # (batch, seq)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids[row, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(item["labels"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_token_count(labels: torch.Tensor) -> int:
    """Tokens that carry loss in a causal-LM batch: labels (batch, seq) other than -100 after the one-token shift
    (position 0 is never predicted)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
