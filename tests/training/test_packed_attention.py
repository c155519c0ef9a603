"""Attention per segment for packed rows (``adapterhub.runtime.packed_attention``) on tiny random Llama, Qwen2 and
Mistral (float32): a packed batch's loss and adapter gradients equal the unpacked batch's (LoRA and a bottleneck
adapter, with and without gradient checkpointing), a sliding window is kept, calls without the per-call keywords
are untouched, and models whose attention cannot take it keep the mask path, said once."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from adapterhub.data.task import Example, TaskData
from adapterhub.runtime import packed_attention
from adapterhub.training import TrainConfig, train
from adapterhub.training.chat_batches import collate_chat, encode_chat
from adapterhub.training.lm_loss import generation_loss
from adapterhub.training.modeling import HeadSettings, prepare_model
from adapterhub.training.packing import (
    EXAMPLES_KEY,
    TOKENS_KEY,
    collate_packed,
    packed_step,
    resolve_segment_attention,
)
from tiny_chat import chat_tokenizer
from tiny_models import build, perturb

WORDS = ["classify", "the", "movie", "good", "great", "bad", "awful", "plot", "positive", "negative"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return chat_tokenizer(WORDS)


def make_task(rows: int, dev: int = 0) -> TaskData:
    """Conversations of 4-10 prompt words (so of different lengths), half positive."""
    generator = torch.Generator().manual_seed(0)
    examples = []
    for i in range(rows + dev):
        filler = ["the", "movie", "plot"] * 3
        words = [
            "classify",
            *filler[: int(torch.randint(0, 7, (1,), generator=generator))],
            "good" if i % 2 else "bad",
        ]
        messages = (
            {"role": "user", "content": " ".join(words)},
            {"role": "assistant", "content": "positive" if i % 2 else "negative"},
        )
        examples.append(Example(messages[0]["content"], messages=messages))
    return TaskData(
        "chat", "generation", (), tuple(examples[dev:]), tuple(examples[:dev]), ("negative", "positive")
    )


def features(tokenizer: Any, rows: int, **options: Any) -> list[dict[str, Any]]:
    return list(encode_chat(make_task(rows).train, tokenizer, max_length=64, **options).dataset)


def adapted(arch: str, method: str, **overrides: Any) -> nn.Module:
    model = prepare_model(build(arch, "causal_lm", **overrides), make_task(2), method, "task", HeadSettings())
    model.set_attn_implementation("sdpa")
    perturb(model._adapterhub.adapters["task"], std=0.2)  # type: ignore[attr-defined]
    return model.eval()  # no dropout: both computations must be the same function


def loss_and_grads(
    model: nn.Module, batch: dict[str, torch.Tensor], per_segment: bool, chunk: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    batch = {k: v for k, v in batch.items() if k not in (EXAMPLES_KEY, TOKENS_KEY)}
    with packed_step(model, batch, per_segment):
        loss = generation_loss(model, batch, chunk_size=chunk)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_segment_kwargs_are_the_cumulative_lengths_of_the_flattened_rows() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    extra = packed_attention.segment_kwargs(positions)
    assert extra["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12]
    assert extra["cu_seq_lens_q"].dtype == torch.int32 and extra["cu_seq_lens_k"] is extra["cu_seq_lens_q"]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("method", ["adapter:lora", "adapter:pfeiffer"])
@pytest.mark.parametrize("checkpointing", [None, "non_reentrant", "reentrant"])
def test_packed_per_segment_equals_unpacked(
    tokenizer: Any, arch: str, method: str, checkpointing: str | None
) -> None:
    model = adapted(arch, method)
    if checkpointing is not None:
        model.train()  # transformers checkpoints only in training mode; the tiny models have no dropout
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"}
        )
    items = features(tokenizer, 8, train_on_prompt=method == "adapter:pfeiffer")
    packed = collate_packed(items, tokenizer, 48)
    assert packed["input_ids"].shape[0] < len(items)  # really packed
    before = packed_attention.runs()
    loss, grads = loss_and_grads(model, packed, per_segment=True)
    layers = model.config.num_hidden_layers
    assert packed_attention.runs() - before >= layers  # every layer ran per segment (more: recomputes)
    assert model.config._attn_implementation == "sdpa"  # restored after the step
    reference, expected = loss_and_grads(model, collate_chat(items, tokenizer), per_segment=False)
    masked, _ = loss_and_grads(model, packed, per_segment=False)
    assert torch.allclose(loss, reference, atol=1e-5, rtol=0)
    assert torch.allclose(masked, reference, atol=1e-5, rtol=0)
    assert grads and all(g.abs().max() > 0 for g in grads.values())
    for name, grad in grads.items():
        assert torch.allclose(grad, expected[name], atol=1e-5, rtol=0), name


def test_a_sliding_window_shorter_than_the_examples_is_kept(tokenizer: Any) -> None:
    model = adapted("mistral", "adapter:lora", sliding_window=3)
    items = features(tokenizer, 6)
    assert min(len(item["input_ids"]) for item in items) > 3
    packed = collate_packed(items, tokenizer, 48)
    loss, grads = loss_and_grads(model, packed, per_segment=True)
    reference, expected = loss_and_grads(model, collate_chat(items, tokenizer), per_segment=False)
    assert torch.allclose(loss, reference, atol=1e-5, rtol=0)
    for name, grad in grads.items():
        assert torch.allclose(grad, expected[name], atol=1e-5, rtol=0), name
    # and the window matters here: without it the loss differs
    wide = adapted("mistral", "adapter:lora", sliding_window=None)
    other, _ = loss_and_grads(wide, packed, per_segment=True)
    assert not torch.allclose(other, loss, atol=1e-4)


def test_calls_without_segments_are_bit_identical_and_the_config_comes_back() -> None:
    model = adapted("llama", "adapter:lora")
    ids = torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with packed_attention.enabled(model):
            assert model.config._attn_implementation == packed_attention.NAME
            routed = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(plain, routed)
    assert model.config._attn_implementation == "sdpa"


def test_wrong_segments_are_refused() -> None:
    model = adapted("llama", "adapter:lora")
    ids = torch.randint(3, 99, (1, 6))
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    bad = packed_attention.segment_kwargs(torch.tensor([[0, 1, 0, 1]]))
    with packed_attention.enabled(model), pytest.raises(Exception, match="segment_kwargs"):
        model(input_ids=ids, position_ids=positions, use_cache=False, **bad)


@pytest.mark.parametrize("case", ["eager", "not causal"])
def test_models_that_cannot_run_per_segment_keep_the_mask(case: str) -> None:
    model = build("llama", "causal_lm")
    model.set_attn_implementation("eager" if case == "eager" else "sdpa")
    attn = model.config._attn_implementation
    if (
        case == "not causal"
    ):  # an attention module that is not causal refuses to run per segment: the probe sees it
        for module in model.modules():
            if hasattr(module, "is_causal") and hasattr(module, "q_proj"):
                module.is_causal = False
    per_segment, line = resolve_segment_attention(model)
    assert not per_segment and line is not None and "dense block-diagonal attention mask" in line
    assert model.config._attn_implementation == attn


def test_training_runs_per_segment_and_follows_the_mask_path(
    tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = []
    for attn in ("sdpa", "eager"):
        model = build("llama", "causal_lm")
        model.set_attn_implementation(attn)
        config = TrainConfig(
            method="adapter:lora",
            max_steps=3,
            batch_size=8,
            learning_rate=1e-2,
            max_length=40,
            progress=False,
        )
        runs.append(train(model, make_task(16, dev=2), config, tokenizer=tokenizer).to_dict())
        assert model.config._attn_implementation == attn
    assert runs[0]["generation"]["packed_attention"] == "per_segment"
    assert runs[1]["generation"]["packed_attention"] == "mask"
    lines = [line for line in capsys.readouterr().err.splitlines() if "block-diagonal" in line]
    assert len(lines) == 1 and "'eager'" in lines[0]
    losses = [[h["train_loss"] for h in run["history"] if h.get("train_loss") is not None] for run in runs]
    assert len(losses[0]) >= 2 and losses[0] == pytest.approx(losses[1], abs=1e-4)


def test_packed_calls_get_no_dense_mask_and_a_call_without_segments_is_refused() -> None:
    model = adapted("qwen2", "adapter:lora")
    ids = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 0, 1]])
    masks: list[Any] = []
    layer = model.model.layers[0].self_attn
    handle = layer.register_forward_pre_hook(
        lambda _m, _a, kw: masks.append(kw.get("attention_mask")), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(input_ids=ids, position_ids=positions, use_cache=False)
            batch = {"input_ids": ids, "position_ids": positions}
            with packed_step(model, batch, per_segment=True):
                model(**batch, use_cache=False)
                with pytest.raises(Exception, match="carries no cu_seq_lens_q"):
                    model(input_ids=ids, position_ids=positions, use_cache=False)
    finally:
        handle.remove()
    assert isinstance(masks[0], torch.Tensor) and masks[0].shape[-2:] == (6, 6)  # the mask path: dense
    assert masks[1] is None  # per segment: transformers built no mask
