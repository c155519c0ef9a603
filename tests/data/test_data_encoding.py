"""encode + collate with a tiny offline BERT tokenizer: shapes, padding, label tensors and errors."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch.utils.data import DataLoader

from adapterhub.data import EncodedDataset, Example, collate, encode
from adapterhub.errors import ConfigError

CLS, SEP, PAD = 2, 3, 0


def test_classification_batch_is_padded_to_the_longest_row(tokenizer) -> None:
    examples = [
        Example("the movie was good", label=1),
        Example("bad", label=0),
        Example("dull plot", label=0),
    ]
    dataset = encode(examples, tokenizer, kind="classification")
    assert isinstance(dataset, EncodedDataset) and len(dataset) == 3
    assert dataset[1]["input_ids"] == [CLS, tokenizer.convert_tokens_to_ids("bad"), SEP]
    batch = collate([dataset[0], dataset[1]], tokenizer)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == (2, 6) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][1].tolist() == [CLS, tokenizer.convert_tokens_to_ids("bad"), SEP, PAD, PAD, PAD]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long


def test_text_pairs_get_token_types_and_truncation(tokenizer) -> None:
    examples = [Example("the cat", "the dog was not very good", label=0), Example("a", "b", label=1)]
    dataset = encode(examples, tokenizer, kind="classification", max_length=8)
    assert len(dataset[0]["input_ids"]) == 8
    batch = collate(list(dataset), tokenizer)
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert batch["token_type_ids"][1].tolist()[:5] == [0, 0, 0, 1, 1]


def test_regression_labels_are_float(tokenizer) -> None:
    dataset = encode([Example("good", label=4.5), Example("bad", label=1.0)], tokenizer, kind="regression")
    labels = collate(list(dataset), tokenizer)["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [4.5, 1.0]


def test_multilabel_labels_are_multi_hot(tokenizer) -> None:
    examples = [Example("fun", label=(0, 2)), Example("dull", label=()), Example("it", label=(1,))]
    dataset = encode(examples, tokenizer, kind="multilabel", num_labels=4)
    labels = collate(list(dataset), tokenizer)["labels"]
    assert labels.dtype == torch.float32 and labels.shape == (3, 4)
    assert labels.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    with pytest.raises(ConfigError, match=r"needs num_labels=.*task.num_labels"):
        encode(examples, tokenizer, kind="multilabel")
    with pytest.raises(ConfigError, match=r"class indices in 0..1"):
        encode(examples, tokenizer, kind="multilabel", num_labels=2)


def test_multiple_choice_shapes_and_padding_of_short_rows(tokenizer) -> None:
    examples = [
        Example("who did it", choices=("the cat", "the dog", "a very good dog"), label=2),
        Example("go home", choices=("yes", "no"), label=0),
    ]
    dataset = encode(examples, tokenizer, kind="multiple_choice")
    assert len(dataset[1]["input_ids"]) == 2  # unpadded: each item keeps its own choices
    batch = collate(list(dataset), tokenizer)
    assert batch["input_ids"].shape == (2, 3, 10)
    assert batch["attention_mask"].shape == batch["token_type_ids"].shape == (2, 3, 10)
    assert batch["choice_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["choice_mask"].dtype == torch.bool
    # the padded third choice of item 1 repeats its first choice (a well-formed row), masked out by choice_mask
    assert torch.equal(batch["input_ids"][1, 2], batch["input_ids"][1, 0])
    assert torch.equal(batch["attention_mask"][1, 2], batch["attention_mask"][1, 0])
    assert batch["input_ids"][0, 2].tolist() == [
        CLS,
        *tokenizer.convert_tokens_to_ids(["who", "did", "it", "[SEP]", "a", "very", "good", "dog"]),
        SEP,
    ]
    assert batch["attention_mask"][1, 0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert batch["labels"].tolist() == [2, 0] and batch["labels"].dtype == torch.long
    wider = encode(examples, tokenizer, kind="multiple_choice", num_labels=4)  # an upper bound, not a width
    assert collate(list(wider), tokenizer)["input_ids"].shape[1] == 3
    with pytest.raises(ConfigError, match="fewer than the 3 choices"):
        encode(examples, tokenizer, kind="multiple_choice", num_labels=2)


def test_multiple_choice_batches_follow_their_own_most_choices(tokenizer) -> None:
    counts = [2, 10, 2, 3, 2, 2, 5, 2]
    examples = [
        Example(f"question {i}", choices=tuple(f"answer {j}" for j in range(n)), label=n - 1)
        for i, n in enumerate(counts)
    ]
    dataset = encode(examples, tokenizer, kind="multiple_choice")
    loader = DataLoader(dataset, batch_size=2, collate_fn=functools.partial(collate, tokenizer=tokenizer))
    batches = list(loader)
    assert [b["input_ids"].shape[1] for b in batches] == [10, 3, 2, 5]  # each batch's own maximum
    for batch, pair in zip(batches, zip(counts[::2], counts[1::2])):
        assert batch["choice_mask"].sum(dim=1).tolist() == list(pair)
        assert batch["choice_mask"].shape == batch["input_ids"].shape[:2]
    fixed = encode(examples[:1] + examples[2:3], tokenizer, kind="multiple_choice")
    assert bool(collate(list(fixed), tokenizer)["choice_mask"].all())  # same counts: no padding at all
    bad = dict(dataset[0], labels=5)  # 2 choices, label 5
    with pytest.raises(ConfigError, match="label 5 but 2 choices"):
        collate([bad, dataset[1]], tokenizer)


def test_multiple_choice_text_pair_goes_before_each_choice(tokenizer) -> None:
    dataset = encode([Example("he", "did", ("run", "walk"), 1)], tokenizer, kind="multiple_choice")
    assert dataset[0]["input_ids"][0] == [
        CLS,
        *tokenizer.convert_tokens_to_ids(["he", "[SEP]", "did", "run"]),
        SEP,
    ]


def test_unlabelled_examples_have_no_labels(tokenizer) -> None:
    batch = collate(
        list(encode([Example("a"), Example("the cat")], tokenizer, kind="classification")), tokenizer
    )
    assert "labels" not in batch
    mixed = list(encode([Example("a", label=0), Example("b")], tokenizer, kind="classification"))
    with pytest.raises(ConfigError, match="mixes labelled and unlabelled"):
        collate(mixed, tokenizer)


def test_left_padding_and_missing_pad_token(tokenizer) -> None:
    items = list(
        encode([Example("the cat", label=0), Example("a", label=1)], tokenizer, kind="classification")
    )
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    batch = collate(items, left)
    assert batch["input_ids"][1].tolist()[:1] == [PAD] and batch["attention_mask"][1].tolist() == [0, 1, 1, 1]

    class NoPad:
        pad_token_id = None

    with pytest.raises(ConfigError, match="has no pad token"):
        collate(items, NoPad())


def test_label_kind_mismatch_and_bad_arguments(tokenizer) -> None:
    with pytest.raises(ConfigError, match="needs an integer index"):
        encode([Example("a", label=0.5)], tokenizer, kind="classification")
    with pytest.raises(ConfigError, match="needs a number"):
        encode([Example("a", label=(1,))], tokenizer, kind="regression")
    with pytest.raises(ConfigError, match="unknown task kind"):
        encode([Example("a")], tokenizer, kind="ner")
    with pytest.raises(ConfigError, match="max_length"):
        encode([Example("a")], tokenizer, kind="classification", max_length=0)
    with pytest.raises(ConfigError, match="no text_pair but others do"):
        encode([Example("a", "b"), Example("c")], tokenizer, kind="classification")
    with pytest.raises(ConfigError, match="empty batch"):
        collate([], tokenizer)
    assert len(encode([], tokenizer, kind="regression")) == 0


def test_works_with_a_dataloader(tokenizer) -> None:
    examples = [Example(" ".join(["good"] * (i % 5 + 1)), label=i % 2) for i in range(10)]
    loader = DataLoader(
        encode(examples, tokenizer, kind="classification"),
        batch_size=4,
        collate_fn=functools.partial(collate, tokenizer=tokenizer),
    )
    shapes = [tuple(batch["input_ids"].shape) for batch in loader]
    assert shapes == [(4, 6), (4, 7), (2, 7)]
