"""Prompt tuning on a Llama causal LM with labels: the model's own LM head returns logits for the soft tokens too,
(batch, P + T, vocab). The training loss must line up with the labels: it equals a reference computed by hand
(the soft prompt put in front of the token embeddings of the bare model, its logits for the T real positions),
through the full logits and the chunked loss, and a training step moves only the prompt. A Trainer / trl
SFTTrainer, whose loss would not line up, is refused by name."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.training import TrainConfig, train
from adapterhub.training.chat_batches import collate_chat, encode_chat
from adapterhub.training.lm_loss import generation_loss
from adapterhub.training.modeling import HeadSettings, forward_batch, prepare_model
from tiny_chat import chat_tokenizer
from tiny_models import build

from .test_chunked_loss import WORDS, make_task


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return chat_tokenizer(WORDS)


def reference_loss(bare: nn.Module, prompt: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The soft prompt (P, d) in front of the embeddings of ``bare`` (no adapter), positions 0..P+T-1, every
    real token seeing the prompt; loss over the T real positions' logits, position t predicting labels[t + 1]."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]  # (B, T) each
    rows, length = ids.shape
    count = prompt.shape[0]
    embeds = torch.cat([prompt.expand(rows, -1, -1), bare.get_input_embeddings()(ids)], dim=1)  # (B, P+T, d)
    full_mask = torch.cat([torch.ones(rows, count, dtype=mask.dtype), mask], dim=1)  # (B, P+T)
    positions = torch.arange(count + length).unsqueeze(0)  # (1, P+T)
    logits = bare(
        inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions
    ).logits  # (B, P+T, V)
    real = logits[:, count:-1].float()  # (B, T-1, V): the real positions that predict a next token
    return nn.functional.cross_entropy(real.reshape(-1, real.shape[-1]), labels[:, 1:].reshape(-1))


def test_prompt_tuning_loss_lines_up_with_the_labels(tokenizer: Any) -> None:
    torch.manual_seed(0)
    bare = build("llama", "causal_lm").eval()
    model = prepare_model(
        build("llama", "causal_lm"), make_task(2), "adapter:prompt_tuning", "task", HeadSettings()
    )
    model.load_state_dict(bare.state_dict(), strict=False)
    model.eval()
    adapter = model._adapterhub.adapters["task"]  # type: ignore[attr-defined]
    with torch.no_grad():
        adapter.prompt_embedding.weight.normal_(std=0.5)  # a prompt that changes the answers
    data = encode_chat(make_task(6).train, tokenizer, max_length=64)
    batch = collate_chat(list(data.dataset), tokenizer)
    expected = reference_loss(bare, adapter.prompt_embedding.weight.detach(), batch)
    loss, logits = forward_batch(model, batch, "generation")
    assert logits.shape[:2] == batch["input_ids"].shape  # the soft tokens' logits are dropped
    assert loss is not None and torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(generation_loss(model, batch, chunk_size=4), expected, atol=1e-6)
    with torch.no_grad():
        shifted_wrong = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[
            :, :-1
        ]  # (B, P+T-1, V)
    assert shifted_wrong.shape[1] > batch["input_ids"].shape[1]  # what a loss over every position would see


def test_a_prompt_tuning_step_on_a_generation_task_moves_only_the_prompt(tokenizer: Any) -> None:
    torch.manual_seed(0)
    model = build("llama", "causal_lm")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    results = train(
        model,
        make_task(8),
        TrainConfig(
            method="adapter:prompt_tuning", max_steps=2, batch_size=4, learning_rate=1e-1, progress=False
        ),
        tokenizer=tokenizer,
    ).to_dict()
    assert results["status"] == "completed" and results["generation"]["packing"] is False
    gen = results["generation"]
    assert gen["loss"] < gen["loss_before"]  # the prompt learned something about the responses
    for name, param in model.named_parameters():
        if name in base:
            assert torch.equal(param, base[name]), name


def test_trainers_refuse_prompt_tuning_through_the_models_own_lm_head(tokenizer: Any, tmp_path: Any) -> None:
    import transformers

    from adapterhub.training import AdapterTrainer

    model = adapterhub.init(build("llama", "causal_lm"))
    model.add_adapter("soft", config="prompt_tuning")
    model.train_adapter("soft")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ConfigError, match=r"prompt tuning.*adapterhub train --kind generation"):
        AdapterTrainer(model=model, args=args)
    pytest.importorskip("trl")
    from adapterhub.training import sft_trainer

    with pytest.raises(ConfigError, match="would not line up"):
        sft_trainer(model, processing_class=tokenizer)
    model.add_adapter("lora", config="lora")
    model.train_adapter("lora")  # prompt tuning no longer active: accepted
    AdapterTrainer(model=model, args=args)
