"""Tokenizing examples for PyTorch (:func:`encode`) and batching them with dynamic padding (:func:`collate`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from adapterhub.data.task import Example, TaskKind, check_kind
from adapterhub.errors import ConfigError

Feature = dict[str, Any]
TOKEN_KEYS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")


class EncodedDataset(Dataset[Feature]):
    """Tokenized examples, unpadded: item ``i`` is a dict of ``input_ids``, ``attention_mask``, maybe
    ``token_type_ids`` (lists of ints; lists of such lists, one per choice, for multiple choice) and ``labels``
    (absent for unlabelled examples). Batch items with :func:`collate`.
    """

    def __init__(self, features: Sequence[Feature], kind: TaskKind) -> None:
        self.features: tuple[Feature, ...] = tuple(features)
        self.kind: TaskKind = kind

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Feature:
        return self.features[index]

    def __repr__(self) -> str:
        return f"EncodedDataset(kind={self.kind!r}, {len(self.features)} examples)"


def encode(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    kind: str,
    max_length: int = 128,
    num_labels: int | None = None,
) -> EncodedDataset:
    """Tokenize ``examples`` (truncated to ``max_length`` tokens, not padded) for a ``kind`` task.

    Each text is paired with its ``text_pair`` when it has one (then every example must have one). For multiple
    choice the text is paired with each choice (``text_pair``, if any, is put before the choice); each item keeps
    its own number of choices (:func:`collate` pads them per batch and marks the real ones in ``choice_mask``), and
    ``num_labels``, when given, is the most choices an example may have. Labels become an
    ``int`` (classification, multiple choice), a ``float`` (regression) or a multi-hot list of ``num_labels``
    floats (multilabel, where ``num_labels`` is required: pass ``task.num_labels``).

    Raises :class:`ConfigError` for a bad ``kind`` (``generation`` included: it has no head to encode for) /
    ``max_length`` / ``num_labels`` or a label that does not fit.
    """
    resolved = check_kind(kind)
    if resolved == "generation":
        raise ConfigError(
            "encode() tokenizes examples for a task head; a generation task's conversations are tokenized with "
            "the model's chat template instead (adapterhub.data.chat)"
        )
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"max_length must be an integer of at least 2, got {max_length!r}")
    if resolved == "multilabel" and (
        isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1
    ):
        raise ConfigError(
            f"encode(kind='multilabel') needs num_labels=<number of classes> (use task.num_labels), got {num_labels!r}"
        )
    examples = list(examples)
    if not examples:
        return EncodedDataset([], resolved)
    if resolved == "multiple_choice":
        tokens = _encode_choices(examples, tokenizer, max_length, num_labels)
    else:
        tokens = _encode_texts(examples, tokenizer, max_length)
    for index, (feature, example) in enumerate(zip(tokens, examples)):
        if example.label is not None:
            feature["labels"] = _label(example.label, resolved, num_labels, index, example)
    return EncodedDataset(tokens, resolved)


def _call(
    tokenizer: Any, first: list[str], second: list[str] | None, max_length: int
) -> dict[str, list[Any]]:
    encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
    out = {key: list(encoded[key]) for key in TOKEN_KEYS if key in encoded}
    if "input_ids" not in out:
        raise ConfigError(
            f"the tokenizer {type(tokenizer).__name__} returned no input_ids; use a text tokenizer"
        )
    if "attention_mask" not in out:
        out["attention_mask"] = [[1] * len(ids) for ids in out["input_ids"]]
    return out


def _encode_texts(examples: list[Example], tokenizer: Any, max_length: int) -> list[Feature]:
    with_pair = [e.text_pair is not None for e in examples]
    if any(with_pair) and not all(with_pair):
        first_missing = with_pair.index(False)
        raise ConfigError(
            f"example {first_missing} has no text_pair but others do; give every example a text_pair or none"
        )
    pairs = [e.text_pair for e in examples] if all(with_pair) else None
    encoded = _call(tokenizer, [e.text for e in examples], pairs, max_length)  # type: ignore[arg-type]
    return [{key: values[i] for key, values in encoded.items()} for i in range(len(examples))]


def _encode_choices(
    examples: list[Example], tokenizer: Any, max_length: int, num_choices: int | None
) -> list[Feature]:
    for index, example in enumerate(examples):
        if not example.choices:
            raise ConfigError(f"example {index} has no choices; a multiple-choice example needs them")
    most = max(len(e.choices or ()) for e in examples)
    if num_choices is not None and (
        isinstance(num_choices, bool) or not isinstance(num_choices, int) or num_choices < most
    ):
        raise ConfigError(
            f"num_labels={num_choices!r} is fewer than the {most} choices of some example; pass task.num_labels"
        )
    firsts: list[str] = []
    seconds: list[str] = []
    bounds = [0]
    for example in examples:
        for choice in example.choices or ():
            firsts.append(example.text)
            seconds.append(choice if example.text_pair is None else f"{example.text_pair} {choice}")
        bounds.append(len(firsts))
    encoded = _call(tokenizer, firsts, seconds, max_length)
    return [
        {key: values[start:stop] for key, values in encoded.items()}
        for start, stop in itertools.pairwise(bounds)
    ]


def _label(label: Any, kind: TaskKind, num_labels: int | None, index: int, example: Example) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"example {index} has label {label!r}, but a {kind} task needs {expected}")

    if kind == "regression":
        if isinstance(label, bool) or not isinstance(label, int | float):
            raise bad("a number")
        return float(label)
    if kind == "multilabel":
        assert num_labels is not None
        ids = label if isinstance(label, tuple | list) else (label,)
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_labels for i in ids):
            raise bad(f"class indices in 0..{num_labels - 1}")
        hot = [0.0] * num_labels
        for i in ids:
            hot[i] = 1.0
        return hot
    if isinstance(label, bool) or not isinstance(label, int):
        raise bad("an integer index")
    if kind == "multiple_choice" and not 0 <= label < len(example.choices or ()):
        raise bad(f"a choice index in 0..{len(example.choices or ()) - 1}")
    return label


def collate(batch: Sequence[Feature], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Pad ``batch`` (items of an :class:`EncodedDataset`) to its longest row and stack it into tensors.

    Returns ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the items have them) of shape
    ``(batch, seq)``, or ``(batch, n_choices, seq)`` for multiple choice, padded with the tokenizer's pad token on
    its ``padding_side``; plus ``labels`` when the items have them: ``long (batch,)`` for class and choice indices,
    ``float (batch,)`` for regression, ``float (batch, num_labels)`` multi-hot for multilabel.

    Multiple choice: ``n_choices`` is the most choices of any item in this batch. An item with fewer gets copies
    of its first choice as padding (well-formed rows for any model), and ``choice_mask`` (batch, n_choices) bool is
    True for real choices, False for padding: pass it to the model with the rest (adapterhub's multiple-choice
    head masks padded choices out of the softmax, loss and argmax), or, for a model's own multiple-choice head,
    apply it to the logits with :func:`adapterhub.heads.mask_choices`.

    Use with a DataLoader as ``collate_fn=functools.partial(collate, tokenizer=tokenizer)``.
    """
    if not batch:
        raise ConfigError("cannot collate an empty batch")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise ConfigError(
            f"the tokenizer {type(tokenizer).__name__} has no pad token; set one, e.g. "
            "tokenizer.pad_token = tokenizer.eos_token"
        )
    left = getattr(tokenizer, "padding_side", "right") == "left"
    pad_values = {
        "input_ids": pad_id,
        "attention_mask": 0,
        "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
    }
    multiple_choice = bool(batch[0]["input_ids"]) and isinstance(batch[0]["input_ids"][0], list)
    out: dict[str, torch.Tensor] = {}
    if multiple_choice:
        counts = [len(item["input_ids"]) for item in batch]
        if min(counts) < 1:
            raise ConfigError("a multiple-choice item has no choices; every example needs at least one")
        most = max(counts)
        out["choice_mask"] = torch.arange(most).unsqueeze(0) < torch.tensor(counts).unsqueeze(
            1
        )  # (batch, most)
        for index, item in enumerate(batch):
            label = item.get("labels")
            if isinstance(label, int) and not 0 <= label < counts[index]:
                raise ConfigError(
                    f"item {index} of the batch has label {label} but {counts[index]} choices; a label is the "
                    "index of one of the item's own choices (fix the data)"
                )
    for key in TOKEN_KEYS:
        if key not in batch[0]:
            continue
        rows = [item[key] for item in batch]
        if multiple_choice:
            # padded choices repeat the item's first choice; choice_mask marks them
            flat = [seq for choices in rows for seq in [*choices, *[choices[0]] * (most - len(choices))]]
            out[key] = _pad(flat, pad_values[key], left).view(len(batch), most, -1)  # (batch, most, seq)
        else:
            out[key] = _pad(rows, pad_values[key], left)
    labelled = ["labels" in item for item in batch]
    if any(labelled):
        if not all(labelled):
            raise ConfigError("a batch mixes labelled and unlabelled examples; label all of them or none")
        labels = [item["labels"] for item in batch]
        dtype = torch.long if isinstance(labels[0], int) and not isinstance(labels[0], bool) else torch.float
        out["labels"] = torch.tensor(labels, dtype=dtype)
    return out


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    longest = max((len(r) for r in rows), default=0)
    tensor = torch.full((len(rows), longest), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if left:
                tensor[i, longest - len(row) :] = torch.tensor(row, dtype=torch.long)
            else:
                tensor[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return tensor
