"""Multiple choice with 2-10 choices per question: per-batch padding, the choice mask, and its users (the flexible
head, a model's built-in head, evaluation, Parallel, fusion_activations, the CLI's data errors)."""

from __future__ import annotations

import functools
import json
import random

import pytest
import torch
import transformers
from torch.utils.data import DataLoader

import adapterhub
from adapterhub.data import Example, collate, encode
from adapterhub.errors import ConfigError
from adapterhub.spec.composition import Fuse, Parallel
from adapterhub.training import loop
from adapterhub.training.config import TrainConfig
from adapterhub.training.loop import evaluate_model, make_loader, train
from adapterhub.training.modeling import forward_batch
from tiny_models import perturb

COUNTS = [2, 10, 2, 3, 2, 2, 5, 2, 7, 2, 2, 4, 9, 2, 3, 2]  # choices per question: 2-10, most 2
CE = torch.nn.functional.cross_entropy
WORDS = ["good", "great", "bad", "awful", "the", "movie", "film", "plot", "is", "was", "very", "cat", "dog"]


def sentence(rng: random.Random, nice: bool) -> str:
    """A few words of the tiny tokenizer's vocabulary; a nice one holds "good"."""
    words = [rng.choice(WORDS[2:]) for _ in range(rng.randint(2, 6))]
    return " ".join([*words, "good"] if nice else words)


def varied_examples(count: int = len(COUNTS), seed: int = 3) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        n = COUNTS[i % len(COUNTS)]
        answer = rng.randrange(n)
        choices = tuple(sentence(rng, j == answer) for j in range(n))
        examples.append(Example("which one is nice", choices=choices, label=answer))
    return examples


def batches(tokenizer, examples, batch_size=4):
    data = encode(examples, tokenizer, kind="multiple_choice", max_length=16)
    return list(
        DataLoader(data, batch_size=batch_size, collate_fn=functools.partial(collate, tokenizer=tokenizer))
    )


def without_mask(batch):
    return {k: v for k, v in batch.items() if k not in ("choice_mask", "labels")}


def mc_model(load_tiny, name="mc", scale=None):
    model = adapterhub.init(load_tiny())
    model.add_adapter(name, set_active=True)
    model.add_multiple_choice_head(name)
    if scale is not None:  # an untrained head with large random logits
        perturb(model.heads[name], std=scale, seed=5)
    return model.eval()


def test_an_untrained_head_with_large_random_logits_never_predicts_a_padded_choice():
    from adapterhub.heads import HeadInputs, MultipleChoiceHead

    torch.manual_seed(0)
    head = MultipleChoiceHead("mc", 16, layers=1).eval()
    perturb(head, std=20.0, seed=4)
    counts = torch.tensor(COUNTS)
    most = int(counts.max())
    mask = torch.arange(most)[None, :] < counts[:, None]  # (questions, most)
    hidden = torch.randn(len(COUNTS) * most, 5, 16)  # (questions * most, seq, d): every row different
    masked = head(HeadInputs(hidden, None, None, num_choices=most, choice_mask=mask)).logits
    unmasked = head(HeadInputs(hidden, None, None, num_choices=most)).logits
    assert unmasked[mask].abs().max() > 100  # large logits indeed
    assert mask.gather(1, masked.argmax(-1)[:, None]).all()
    assert not mask.gather(1, unmasked.argmax(-1)[:, None]).all()  # without the mask, padding gets picked
    assert torch.equal(masked[mask], unmasked[mask])
    assert (masked[~mask] == torch.finfo(masked.dtype).min).all()


def test_no_prediction_of_the_model_is_a_padded_choice(load_tiny, tiny_tokenizer):
    model = mc_model(load_tiny, scale=10.0)
    with torch.no_grad():
        for batch in batches(tiny_tokenizer, varied_examples(32)):
            logits = model(
                **without_mask(batch), choice_mask=batch["choice_mask"]
            ).logits  # (batch, n_choices)
            assert batch["choice_mask"].gather(1, logits.argmax(-1)[:, None]).all()
            assert (logits[~batch["choice_mask"]] == torch.finfo(logits.dtype).min).all()


def test_loss_is_the_per_question_cross_entropy_over_its_real_choices(load_tiny, tiny_tokenizer):
    model = mc_model(load_tiny, scale=1.0)
    with torch.no_grad():
        for batch in batches(tiny_tokenizer, varied_examples()):
            out = model(**batch)  # choice_mask and labels as collated
            raw = model(**without_mask(batch)).logits  # every choice scored, none masked
            counts = batch["choice_mask"].sum(1).tolist()
            expected = torch.stack([CE(raw[i, :n], batch["labels"][i]) for i, n in enumerate(counts)]).mean()
            torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
            assert torch.equal(out.logits[batch["choice_mask"]], raw[batch["choice_mask"]])


def test_the_encoder_runs_each_batch_at_its_own_most_choices(load_tiny, tiny_tokenizer):
    model = mc_model(load_tiny)
    rows: list[int] = []
    model.embeddings.register_forward_hook(lambda module, args, output: rows.append(output.shape[0]))
    with torch.no_grad():
        for batch in batches(tiny_tokenizer, varied_examples()):
            model(**batch)
    groups = [COUNTS[i : i + 4] for i in range(0, len(COUNTS), 4)]
    assert rows == [4 * max(group) for group in groups] == [40, 20, 28, 36]
    assert sum(rows) < 4 * 4 * max(COUNTS)  # padding to the data set's most choices would encode 160 rows


def test_fixed_choices_train_exactly_as_without_a_mask(task_dir, load_tiny, tiny_tokenizer, monkeypatch):
    """Same data, all questions with 3 choices: the all-True choice mask changes nothing, bit for bit."""
    from adapterhub.data import load_task

    task = load_task(task_dir("multiple_choice", train=24, dev=16))
    config = TrainConfig(
        method="adapter:pfeiffer", epochs=2, batch_size=8, max_length=16, progress=False, seed=3
    )
    masked = train(load_tiny(), task, config, tokenizer=tiny_tokenizer)
    real_collate = loop.collate

    def collate_without_mask(items, tokenizer):
        batch = real_collate(items, tokenizer)
        assert bool(batch.pop("choice_mask").all())
        return batch

    monkeypatch.setattr(loop, "collate", collate_without_mask)
    unmasked = train(load_tiny(), task, config, tokenizer=tiny_tokenizer)
    assert [row["train_loss"] for row in masked.history] == [row["train_loss"] for row in unmasked.history]
    assert masked.dev_metrics == unmasked.dev_metrics


def test_training_and_evaluation_on_varied_choices(tmp_path, load_tiny, tiny_tokenizer):
    from adapterhub.data import load_task

    for split, seed in (("train", 1), ("dev", 2)):
        rows = [
            {"text": e.text, "choices": list(e.choices), "label": e.label} for e in varied_examples(32, seed)
        ]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(tmp_path)
    config = TrainConfig(method="adapter:pfeiffer", epochs=1, batch_size=4, max_length=16, progress=False)
    model = load_tiny()
    results = train(model, task, config, tokenizer=tiny_tokenizer)
    # evaluation joins batches of different widths; its accuracy is the argmax over each question's real choices
    loader = make_loader(
        encode(task.dev, tiny_tokenizer, kind="multiple_choice", max_length=16),
        tiny_tokenizer,
        4,
        shuffle=False,
        seed=0,
    )
    metrics = evaluate_model(model, loader, "multiple_choice")
    correct = 0
    with torch.no_grad():
        for batch in loader:
            raw = model(**without_mask(batch)).logits
            for i, n in enumerate(batch["choice_mask"].sum(1).tolist()):
                correct += int(raw[i, :n].argmax() == batch["labels"][i])
    assert metrics["accuracy"] == pytest.approx(correct / len(task.dev))
    assert metrics["accuracy"] == pytest.approx(results.dev_metrics["accuracy"])


def built_in_head(tiny_model_dir):
    torch.manual_seed(0)
    model = transformers.AutoModelForMultipleChoice.from_pretrained(str(tiny_model_dir)).eval()
    perturb(model.classifier, std=3.0, seed=2)
    return model


@pytest.mark.parametrize("with_adapterhub", [False, True])
def test_a_built_in_multiple_choice_head_is_masked_outside_the_model(
    tiny_model_dir, tiny_tokenizer, with_adapterhub
):
    model = built_in_head(tiny_model_dir)
    if with_adapterhub:
        model = adapterhub.init(model)
        model.add_adapter("a", set_active=True)  # an adapter, but no flexible head: the built-in head answers
    with torch.no_grad():
        for batch in batches(tiny_tokenizer, varied_examples()):
            loss, logits = forward_batch(model, batch, "multiple_choice")
            raw = model(**without_mask(batch)).logits
            mask = batch["choice_mask"]
            assert batch["choice_mask"].gather(1, logits.argmax(-1)[:, None]).all()
            assert (logits[~mask] == torch.finfo(logits.dtype).min).all()
            expected = torch.stack(
                [CE(raw[i, :n], batch["labels"][i]) for i, n in enumerate(mask.sum(1).tolist())]
            ).mean()
            torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
            if not bool(mask.all()):  # the built-in loss counts the padded choices: not the same
                assert not torch.allclose(model(**without_mask(batch), labels=batch["labels"]).loss, expected)
        if with_adapterhub:  # the model itself cannot take the mask: a clear error saying what to do
            with pytest.raises(ConfigError, match="mask_choices"):
                model(**batch)


def test_parallel_branches_mask_their_choices_like_each_adapter_alone(load_tiny, tiny_tokenizer):
    model = adapterhub.init(load_tiny())
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name)
        model.add_multiple_choice_head(name)
        perturb(model._adapterhub.adapters[name], std=0.2, seed=i)
        perturb(model.heads[name], std=2.0, seed=10 + i)
    model.eval()
    batch = batches(tiny_tokenizer, varied_examples(), batch_size=6)[0]
    with torch.no_grad():
        with model.adapter_setup(Parallel("a", "b")):
            out = model(**batch)
        for i, name in enumerate(("a", "b")):
            with model.adapter_setup(name):
                alone = model(**batch)
            torch.testing.assert_close(out[i].logits, alone.logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(out[i].loss, alone.loss, atol=1e-5, rtol=0)
            assert (out[i].logits[~batch["choice_mask"]] == torch.finfo(torch.float32).min).all()


def test_fusion_activations_count_only_the_real_choices(load_tiny, tiny_tokenizer):
    model = adapterhub.init(load_tiny())
    for i, name in enumerate(("x", "y")):
        model.add_adapter(name)
        perturb(model._adapterhub.adapters[name], std=0.2, seed=i)
    model.add_adapter_fusion(Fuse("x", "y"), set_active=True)
    model.eval()
    examples = varied_examples(8)
    choice_batches = batches(tiny_tokenizer, examples)
    assert not all(bool(b["choice_mask"].all()) for b in choice_batches)
    rows = [Example(e.text, c) for e in examples for c in e.choices or ()]  # every real choice, once
    from_rows = model.fusion_activations(rows, tokenizer=tiny_tokenizer, max_length=16)
    no_head = model.fusion_activations(choice_batches)  # no head: the choices are sent as flat rows
    model.add_multiple_choice_head("y")
    with_head = model.fusion_activations(choice_batches)  # the multiple-choice head takes them as they are
    for got in (no_head, with_head):
        assert got.tokens == from_rows.tokens
        assert torch.allclose(torch.tensor(got.weights), torch.tensor(from_rows.weights), atol=1e-5)


def test_cli_data_errors_name_the_cli_flags(tmp_path, capsys):
    from adapterhub.cli import main

    rows = [{"id": i, "sentence": "good film", "gold": "pos"} for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["train", "--data", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert "no column 'label'" in err and "gold" in err
    assert "--label-column" in err and "label_column=" not in err
