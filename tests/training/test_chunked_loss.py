"""The chunked LM-head loss of generation training (training/lm_loss.py) on a tiny random Llama: the same loss
and gradients as the full logits for every kind of method (an adapter on the LM head and an invertible adapter
included), packed and unpacked, the head never run on more than a chunk of positions, and a model whose logits are
not its head over its last hidden state refused by name."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import nn

from adapterhub.data.task import Example, TaskData
from adapterhub.errors import ConfigError
from adapterhub.training import TrainConfig, train
from adapterhub.training.chat_batches import collate_chat, encode_chat
from adapterhub.training.generate_eval import response_loss
from adapterhub.training.lm_loss import generation_loss
from adapterhub.training.loop import make_loader
from adapterhub.training.methods import trainable_parameters
from adapterhub.training.modeling import HeadSettings, forward_batch, prepare_model
from adapterhub.training.packing import EXAMPLES_KEY, TOKENS_KEY, collate_packed
from tiny_chat import chat_tokenizer
from tiny_models import build, perturb

WORDS = ["classify", "the", "movie", "good", "great", "bad", "awful", "plot", "positive", "negative"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return chat_tokenizer(WORDS)


def make_task(rows: int, seed: int = 0) -> TaskData:
    rng = random.Random(seed)
    examples = []
    for i in range(rows):
        positive = i % 2 == 0
        word = rng.choice(["good", "great"] if positive else ["bad", "awful"])
        filler = " ".join(rng.choice(["the", "movie", "plot"]) for _ in range(rng.randint(0, 6)))
        answer = "positive great" if positive else "negative bad movie"  # responses of 3 and 4 tokens
        messages = (
            {"role": "user", "content": " ".join(f"classify {filler} {word} movie".split())},
            {"role": "assistant", "content": answer},
        )
        examples.append(Example(messages[0]["content"], messages=messages))
    return TaskData("chat", "generation", (), tuple(examples), tuple(examples[:4]), ())


def adapted(method: str, arch: str = "llama", **overrides: Any) -> nn.Module:
    torch.manual_seed(0)
    base = build(arch, "causal_lm", **overrides)
    model = prepare_model(base, make_task(2), method, "task", HeadSettings())
    if method != "full":
        perturb(model._adapterhub.adapters["task"], std=0.2)  # type: ignore[attr-defined]
    return model.eval()  # no dropout: both computations must be the same function


def batch_of(tokenizer: Any, rows: int = 6, **options: Any) -> dict[str, torch.Tensor]:
    data = encode_chat(make_task(rows).train, tokenizer, max_length=64, **options)
    return collate_chat(list(data.dataset), tokenizer)


def loss_and_grads(model: nn.Module, compute: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainable_parameters(model).items() if p.grad is not None}
    return loss.detach(), grads


def assert_same(a: tuple[torch.Tensor, dict[str, torch.Tensor]], b: Any) -> None:
    assert torch.allclose(a[0], b[0], rtol=0, atol=1e-6), (float(a[0]), float(b[0]))
    assert sorted(a[1]) == sorted(b[1]) and a[1]
    for name in a[1]:
        assert torch.allclose(a[1][name], b[1][name], rtol=0, atol=1e-6), name


@pytest.mark.parametrize(
    "method",
    [
        "adapter:lora",
        "adapter:lora[target_modules=lm_head]",  # the adapted LM head runs inside the chunks
        "adapter:pfeiffer+inv",  # the invertible adapter's inverse runs before the head
        "adapter:prompt_tuning",  # the model's hidden states have the soft tokens in front
        "adapter:prefix_tuning",
        "full",
    ],
)
def test_chunked_loss_and_gradients_equal_the_full_logits(tokenizer: Any, method: str) -> None:
    model = adapted(method)
    batch = batch_of(tokenizer)
    full = loss_and_grads(model, lambda: forward_batch(model, batch, "generation")[0])
    for chunk in (1, 5, 512):  # one position per chunk, a chunk boundary inside a response, one chunk
        assert_same(full, loss_and_grads(model, lambda c=chunk: generation_loss(model, batch, chunk_size=c)))
    assert_same(full, loss_and_grads(model, lambda: generation_loss(model, batch, chunk_size=0)))


def test_chunked_loss_equals_on_a_packed_batch_and_with_loss_on_the_prompt(tokenizer: Any) -> None:
    model = adapted("adapter:lora")
    data = encode_chat(make_task(6).train, tokenizer, max_length=64, train_on_prompt=True)
    packed = collate_packed(list(data.dataset), tokenizer, max_length=64)
    packed = {k: v for k, v in packed.items() if k not in (EXAMPLES_KEY, TOKENS_KEY)}
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < 6
    full = loss_and_grads(model, lambda: forward_batch(model, packed, "generation")[0])
    assert_same(full, loss_and_grads(model, lambda: generation_loss(model, packed, chunk_size=7)))


def test_the_head_never_sees_more_than_a_chunk(tokenizer: Any) -> None:
    """The (batch, seq, vocab) logits are never computed: every call of the output layer gets at most a chunk of
    positions (or one position per row: the model's own last-position logits and the check against them)."""
    model = adapted("adapter:lora")
    batch = batch_of(tokenizer)
    rows, seq = batch["input_ids"].shape
    widths: list[int] = []
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[:-1].numel()))
    try:
        loss = generation_loss(model, batch, chunk_size=4)
        loss.backward()
    finally:
        handle.remove()
    carried = int((batch["labels"][:, 1:] != -100).sum())
    assert max(widths) <= max(4, rows) < rows * seq
    assert sum(w for w in widths if w <= 4) >= 2 * carried  # every carried position, forward and recompute


def test_sum_reduction_and_the_dev_loss_match_the_full_logits(tokenizer: Any) -> None:
    model = adapted("adapter:lora")
    batch = batch_of(tokenizer)
    with torch.no_grad():
        mean = generation_loss(model, batch, chunk_size=3)
        total = generation_loss(model, batch, chunk_size=3, reduction="sum")
    carried = int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(total, mean * carried, rtol=1e-6)
    data = encode_chat(make_task(6).train, tokenizer, max_length=64).dataset
    loader = make_loader(data, tokenizer, 4, shuffle=False, seed=0, collate_fn=collate_chat)
    assert response_loss(model, loader, chunk_size=2) == pytest.approx(
        response_loss(model, loader, chunk_size=0), abs=1e-6
    )


def test_a_model_with_soft_capped_logits_is_refused_naming_the_flag(tokenizer: Any) -> None:
    """Gemma 2 soft-caps its logits: the chunked path cannot reproduce them and says what to pass."""
    model = adapted("adapter:lora", arch="gemma2", final_logit_softcapping=0.5)
    batch = batch_of(tokenizer)
    with pytest.raises(ConfigError, match="--loss-chunk-size 0"):
        generation_loss(model, batch, chunk_size=4)
    loss, _ = forward_batch(model, batch, "generation")
    assert torch.allclose(generation_loss(model, batch, chunk_size=0), loss)


def test_training_falls_back_to_the_full_logits_for_a_soft_capping_model_and_says_so(
    tokenizer: Any, capsys: Any
) -> None:
    from adapterhub.training.lm_loss import resolve_loss_chunk

    assert resolve_loss_chunk(adapted("adapter:lora"), 64) == (64, None)
    assert resolve_loss_chunk(adapted("adapter:lora"), 0) == (0, None)
    torch.manual_seed(0)
    results = train(
        build("gemma2", "causal_lm"),  # final_logit_softcapping 30 by default
        make_task(8),
        TrainConfig(method="adapter:lora", max_steps=1, batch_size=4, progress=False),
        tokenizer=tokenizer,
    ).to_dict()
    assert results["status"] == "completed" and results["generation"]["loss_chunk_size"] == 0
    err = capsys.readouterr().err
    assert "loss over the full logits (--loss-chunk-size 0)" in err and "soft-caps" in err


def test_training_with_and_without_chunks_follows_the_same_path(tokenizer: Any) -> None:
    losses = []
    for chunk in (0, 3):
        torch.manual_seed(0)
        results = train(
            build("llama", "causal_lm"),
            make_task(8),
            TrainConfig(
                method="adapter:lora",
                max_steps=3,
                batch_size=4,
                learning_rate=1e-2,
                progress=False,
                loss_chunk_size=chunk,
                eval_every=3,
            ),
            tokenizer=tokenizer,
        ).to_dict()
        assert results["config"]["loss_chunk_size"] == chunk == results["generation"]["loss_chunk_size"]
        losses.append((results["history"][-1]["train_loss"], results["generation"]["loss"]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_loss_chunk_size_is_validated() -> None:
    with pytest.raises(ConfigError, match="loss_chunk_size must be an integer of at least 0"):
        TrainConfig(loss_chunk_size=-1)
    with pytest.raises(ConfigError, match="reduction"):
        generation_loss(
            nn.Linear(1, 1), {"input_ids": torch.zeros(1, 1), "labels": torch.zeros(1, 1)}, reduction="x"
        )


@pytest.mark.parametrize("mode", ["non-reentrant", "reentrant"])
def test_chunked_loss_under_layer_checkpointing_equals_the_full_logits(tokenizer: Any, mode: str) -> None:
    """Activation checkpointing of the layers (recomputed in backward) and the chunks' own checkpoints mix."""
    from adapterhub.training.modeling import enable_checkpointing

    plain = adapted("adapter:lora")
    batch = batch_of(tokenizer)
    full = loss_and_grads(plain, lambda: forward_batch(plain, batch, "generation")[0])
    model = adapted("adapter:lora")
    enable_checkpointing(model, mode)
    model.train()  # transformers checkpoints only in training mode; the tiny Llama has no dropout
    assert_same(full, loss_and_grads(model, lambda: generation_loss(model, batch, chunk_size=5)))


def test_the_dev_loss_falls_back_to_the_full_logits_where_chunks_cannot_reproduce_them(
    tokenizer: Any, capsys: Any
) -> None:
    """The dev loss of a model whose logits the chunked path cannot reproduce (Gemma 2 soft-caps them; on SmolLM2
    trl's ``PeftModel`` in the comparison bench was another) takes the full logits, equal to the explicit
    ``chunk_size=0``, with one line on stderr; a peft model that chunks exactly gives the same loss both ways."""
    data = encode_chat(make_task(6).train, tokenizer, max_length=64).dataset
    loader = make_loader(data, tokenizer, 4, shuffle=False, seed=0, collate_fn=collate_chat)
    capped = adapted("adapter:lora", arch="gemma2", final_logit_softcapping=0.5)
    full = response_loss(capped, loader, chunk_size=0)
    assert capsys.readouterr().err == ""
    assert response_loss(capped, loader) == pytest.approx(full, abs=1e-6)
    assert capsys.readouterr().err.count("dev loss over the full logits") == 1
    peft = pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[dev]')")
    torch.manual_seed(0)
    theirs = peft.get_peft_model(build("llama", "causal_lm"), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    theirs.eval()
    assert response_loss(theirs, loader) == pytest.approx(
        response_loss(theirs, loader, chunk_size=0), abs=1e-6
    )
