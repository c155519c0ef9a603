"""Packing for the generation kind on a tiny random Llama (float32) with an offline ChatML tokenizer: the packer,
position ids and labels of a packed batch, loss and adapter gradients equal to the unpacked ones, attention that
never crosses examples, and the methods that train unpacked."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import nn

from adapterhub.data.chat import IGNORE_INDEX
from adapterhub.data.task import Example, TaskData
from adapterhub.errors import ConfigError
from adapterhub.training import TrainConfig, train
from adapterhub.training.chat_batches import collate_chat, encode_chat
from adapterhub.training.modeling import HeadSettings, causal_lm_loss, forward_batch, prepare_model
from adapterhub.training.packing import (
    EXAMPLES_KEY,
    TOKENS_KEY,
    collate_packed,
    pack_lengths,
    packing_is_exact,
    resolve_packing,
)
from tiny_chat import chat_tokenizer
from tiny_models import build, perturb

WORDS = ["classify", "the", "movie", "good", "great", "bad", "awful", "plot", "positive", "negative"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return chat_tokenizer(WORDS)


def make_task(rows: int, seed: int = 0, dev: int = 0) -> TaskData:
    """Conversations of different lengths (0-6 filler words), half positive."""
    rng = random.Random(seed)
    examples = []
    for i in range(rows + dev):
        positive = i % 2 == 0
        word = rng.choice(["good", "great"] if positive else ["bad", "awful"])
        filler = " ".join(rng.choice(["the", "movie", "plot"]) for _ in range(rng.randint(0, 6)))
        messages = (
            {"role": "user", "content": " ".join(f"classify {filler} {word} movie".split())},
            {"role": "assistant", "content": "positive" if positive else "negative"},
        )
        examples.append(Example(messages[0]["content"], messages=messages))
    return TaskData(
        "chat", "generation", (), tuple(examples[dev:]), tuple(examples[:dev]), ("negative", "positive")
    )


def adapted_llama(method: str, attn: str = "sdpa") -> nn.Module:
    task = make_task(2)
    model = prepare_model(build("llama", "causal_lm"), task, method, "task", HeadSettings())
    model.set_attn_implementation(attn)
    store = model._adapterhub  # type: ignore[attr-defined]
    perturb(store.adapters["task"], std=0.2)  # LoRA's B starts at zero: give every adapter weight a gradient
    return model.eval()  # no dropout: the two computations must be the same function


def features(tokenizer: Any, rows: int, max_length: int = 64, **options: Any) -> list[dict[str, Any]]:
    return list(encode_chat(make_task(rows).train, tokenizer, max_length=max_length, **options).dataset)


def loss_and_grads(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    batch = {k: v for k, v in batch.items() if k not in (EXAMPLES_KEY, TOKENS_KEY)}
    loss, _ = forward_batch(model, batch, "generation")
    assert loss is not None
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


# ------------------------------------------------------------------------------------------------ the packer


def test_packer_never_splits_an_example_nor_exceeds_max_length() -> None:
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 30))]
        max_length = rng.randint(40, 120)
        rows = pack_lengths(lengths, max_length)
        placed = sorted(i for row in rows for i in row)
        assert placed == list(range(len(lengths)))  # every example exactly once, whole
        assert all(sum(lengths[i] for i in row) <= max_length for row in rows)
        assert pack_lengths(lengths, max_length) == rows  # deterministic
        # best fit: no two rows could have been merged
        fills = sorted(sum(lengths[i] for i in row) for row in rows)
        assert len(fills) < 2 or fills[0] + fills[1] > max_length


def test_packer_is_best_fit_decreasing() -> None:
    # 6 opens row 0; 5 does not fit beside it (room 4) and opens row 1; 4 fills row 0; 3 and 2 fill row 1
    assert pack_lengths([3, 5, 6, 2, 4], 10) == [[2, 4], [1, 0, 3]]
    # the fullest row that fits wins: 3 goes beside 6 (room 4), not beside 5 (room 5)
    assert pack_lengths([6, 5, 3], 10) == [[0, 2], [1]]
    assert pack_lengths([3, 5, 6, 2, 4], 10) != pack_lengths([3, 5, 6, 2, 4], 11)


def test_packer_refuses_an_example_longer_than_max_length() -> None:
    with pytest.raises(ConfigError, match="more than --max-length 4"):
        pack_lengths([3, 5], 4)
    with pytest.raises(ConfigError, match="empty"):
        pack_lengths([0], 4)


# --------------------------------------------------------------------------------------------- the batch


def test_position_ids_restart_and_no_label_crosses_an_example(tokenizer: Any) -> None:
    items = features(tokenizer, 9, train_on_prompt=True)  # every token carries loss, the first one too
    max_length = 40
    batch = collate_packed(items, tokenizer, max_length)
    rows = pack_lengths([len(item["input_ids"]) for item in items], max_length)
    assert set(batch) == {"input_ids", "position_ids", "labels", EXAMPLES_KEY, TOKENS_KEY}
    assert batch["input_ids"].shape[0] == len(rows) < len(items)
    assert batch["input_ids"].shape[1] <= max_length
    assert int(batch[EXAMPLES_KEY]) == 9 and int(batch[TOKENS_KEY]) == sum(len(i["input_ids"]) for i in items)
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            n = len(items[index]["input_ids"])
            assert batch["input_ids"][r, start : start + n].tolist() == items[index]["input_ids"]
            assert batch["position_ids"][r, start : start + n].tolist() == list(range(n))
            assert int(batch["labels"][r, start]) == IGNORE_INDEX  # not a target of the previous example
            assert batch["labels"][r, start + 1 : start + n].tolist() == items[index]["labels"][1:]
            start += n
        width = batch["input_ids"].shape[1]
        assert batch["position_ids"][r, start:].tolist() == list(range(width - start))
        assert (batch["labels"][r, start:] == IGNORE_INDEX).all()


# ------------------------------------------------------------------------------- exactness on the model


@pytest.mark.parametrize(
    ("method", "attn"),
    [("adapter:lora", "sdpa"), ("adapter:lora", "eager"), ("adapter:pfeiffer", "sdpa")],
)
def test_packed_loss_and_adapter_gradients_equal_unpacked(tokenizer: Any, method: str, attn: str) -> None:
    model = adapted_llama(method, attn)
    items = features(tokenizer, 8, train_on_prompt=method == "adapter:pfeiffer")
    packed = collate_packed(items, tokenizer, 48)
    assert packed["input_ids"].shape[0] < len(items)  # really packed
    loss, grads = loss_and_grads(model, packed)
    # reference: each example alone, the token-weighted mean over the same examples
    model.zero_grad(set_to_none=True)
    total = torch.zeros(())
    count = 0
    for item in items:
        single = collate_chat([item], tokenizer)
        logits = model(input_ids=single["input_ids"]).logits
        total = total + causal_lm_loss(logits, single["labels"], reduction="sum")
        count += int((single["labels"][:, 1:] != IGNORE_INDEX).sum())
    reference = total / count
    reference.backward()
    assert torch.allclose(loss, reference.detach(), atol=1e-5, rtol=0)
    assert grads and all(g.abs().max() > 0 for g in grads.values())
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(grads[name], param.grad, atol=1e-5, rtol=0), name
    # and the padded unpacked batch of the same examples gives the same loss
    padded_loss, _ = loss_and_grads(model, collate_chat(items, tokenizer))
    assert torch.allclose(loss, padded_loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_does_not_cross_examples(tokenizer: Any, attn: str) -> None:
    model = adapted_llama("adapter:lora", attn)
    items = features(tokenizer, 2)
    one, two = items[0]["input_ids"], items[1]["input_ids"]
    changed = dict(items[0], input_ids=[one[0], *reversed(one[1:])])
    assert changed["input_ids"] != one
    with torch.no_grad():
        batches = [collate_packed([a, items[1]], tokenizer, 64) for a in (items[0], changed)]
        assert all(b["input_ids"].shape[0] == 1 for b in batches)  # one row holding both
        starts = [b["input_ids"][0].tolist().index(two[0], len(one) - 1) for b in batches]
        outs = [
            model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[
                0, s : s + len(two)
            ]
            for b, s in zip(batches, starts)
        ]
        alone = model(input_ids=torch.tensor([two])).logits[0]
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=0)
    assert torch.allclose(outs[0], alone, atol=1e-5, rtol=0)
    # without the restart, or with a key/value cache, the second example sees the first: the check can fail
    with torch.no_grad():
        plain = model(input_ids=batches[0]["input_ids"]).logits[0, starts[0] : starts[0] + len(two)]
        cached = model(input_ids=batches[0]["input_ids"], position_ids=batches[0]["position_ids"]).logits
    assert not torch.allclose(plain, alone, atol=1e-3)
    assert not torch.allclose(cached[0, starts[0] : starts[0] + len(two)], alone, atol=1e-3)


class IgnoresPositions(nn.Module):
    """A causal LM whose attention does not see packed sequences: it drops the position ids."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build("llama", "causal_lm")
        self.config = self.inner.config

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        return self.inner(input_ids=input_ids, **kwargs)


def test_a_model_that_lets_examples_meet_is_not_packed() -> None:
    assert packing_is_exact(build("llama", "causal_lm"))
    model = IgnoresPositions()
    assert not packing_is_exact(model)
    packed, line = resolve_packing(None, model)
    assert not packed and line is not None and "training unpacked" in line
    with pytest.raises(ConfigError, match="--no-packing"):
        resolve_packing(True, model)
    assert resolve_packing(False, model) == (False, None)


# ------------------------------------------------------------------------------------------------ training


def test_packed_training_follows_the_unpacked_one(tokenizer: Any) -> None:
    runs = []
    for packing in (None, False):
        results = train(
            build("llama", "causal_lm"),
            make_task(16, dev=2),
            TrainConfig(
                method="adapter:lora",
                max_steps=3,
                batch_size=8,
                learning_rate=1e-2,
                max_length=40,
                progress=False,
                packing=packing,
                eval_every=1,
            ),
            tokenizer=tokenizer,
        ).to_dict()
        runs.append(results)
    assert runs[0]["generation"]["packing"] is True and runs[1]["generation"]["packing"] is False
    assert runs[0]["train_tokens_per_second"] and runs[1]["train_tokens_per_second"]
    losses = [[h["train_loss"] for h in run["history"] if h.get("train_loss") is not None] for run in runs]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], abs=1e-4)


@pytest.mark.parametrize(
    ("method", "said"),
    [("adapter:prefix_tuning", "prefix"), ("adapter:prompt_tuning", "prompt"), ("adapter:loreft", "ReFT")],
)
def test_per_row_methods_train_unpacked_and_say_so(
    tokenizer: Any, method: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = TrainConfig(method=method, max_steps=2, batch_size=4, progress=False)
    results = train(build("llama", "causal_lm"), make_task(8), config, tokenizer=tokenizer).to_dict()
    assert results["generation"]["packing"] is False
    lines = [line for line in capsys.readouterr().err.splitlines() if "training unpacked" in line]
    assert len(lines) == 1 and said in lines[0]
    with pytest.raises(ConfigError, match="--no-packing"):
        train(build("llama", "causal_lm"), make_task(8), config.replace(packing=True), tokenizer=tokenizer)


def test_packing_is_refused_for_other_kinds() -> None:
    task = TaskData("t", "classification", ("a", "b"), (Example("good", 0), Example("bad", 1)), ())
    with pytest.raises(ConfigError, match="packing applies to generation tasks"):
        train(build("bert"), task, TrainConfig(packing=True, max_steps=1, progress=False), tokenizer=None)
    with pytest.raises(ConfigError, match="packing must be"):
        TrainConfig(packing="yes")  # type: ignore[arg-type]


def test_packing_flags_reach_the_config() -> None:
    import argparse

    from adapterhub.training.cli_args import add_training_arguments, train_config

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    for flags, expected in (([], None), (["--packing"], True), (["--no-packing"], False)):
        args = parser.parse_args(flags)
        assert train_config(args, "adapter:lora", "out", None).packing is expected
