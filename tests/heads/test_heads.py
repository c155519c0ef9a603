"""Every head type on the architectures it is meant for: outputs, losses, training, save/load, errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers.modeling_outputs import (
    CausalLMOutputWithPast,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

import adapterhub
from adapterhub.heads import HEADS
from tiny_models import DECODERS, ENCODERS, build, make_inputs, perturb

VOCAB = 99
IDS = {0: "O", 1: "B-PER", 2: "I-PER"}


def targets(head_type: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    batch, seq = inputs["input_ids"].shape[:2]
    generator = torch.Generator().manual_seed(7)
    if head_type == "classification":
        return {"labels": torch.tensor([0, 1, 2])}
    if head_type == "regression":
        return {"labels": torch.tensor([0.5, -1.0, 2.0])}
    if head_type == "multilabel":
        return {"labels": torch.randint(0, 2, (batch, 4), generator=generator)}
    if head_type == "tagging":
        labels = torch.randint(0, 3, (batch, seq), generator=generator)
        labels[:, 0] = -100
        return {"labels": labels}
    if head_type == "multiple_choice":
        return {"labels": torch.tensor([1, 0])}
    if head_type == "question_answering":
        return {"start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([2, 4, 3])}
    return {"labels": inputs["input_ids"].clone()}  # causal_lm, masked_lm


def add(model, head_type: str, name: str = "task"):
    if head_type == "classification":
        return model.add_classification_head(name, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
    if head_type == "regression":
        return model.add_head(name, "regression")
    if head_type == "multilabel":
        return model.add_multilabel_head(name, num_labels=4, id2label={0: "a", 1: "b", 2: "c", 3: "d"})
    if head_type == "tagging":
        return model.add_tagging_head(name, num_labels=3, id2label=IDS)
    if head_type == "multiple_choice":
        return model.add_multiple_choice_head(name)
    if head_type == "question_answering":
        return model.add_qa_head(name)
    if head_type == "causal_lm":
        return model.add_causal_lm_head(name)
    return model.add_masked_lm_head(name)


def inputs_for(head_type: str) -> dict[str, torch.Tensor]:
    inputs = make_inputs()
    if head_type == "multiple_choice":  # (batch 2, choices 3, seq 7)
        return {k: v.unsqueeze(0).expand(2, -1, -1).clone() for k, v in inputs.items()}
    return inputs


EXPECTED = {
    "classification": (SequenceClassifierOutput, (3, 3)),
    "regression": (SequenceClassifierOutput, (3, 1)),
    "multilabel": (SequenceClassifierOutput, (3, 4)),
    "tagging": (TokenClassifierOutput, (3, 7, 3)),
    "multiple_choice": (MultipleChoiceModelOutput, (2, 3)),
    "question_answering": (QuestionAnsweringModelOutput, None),
    "causal_lm": (CausalLMOutputWithPast, (3, 7, VOCAB)),
    "masked_lm": (MaskedLMOutput, (3, 7, VOCAB)),
}
SEQUENCE_TYPES = ["classification", "regression", "multilabel"]
ENCODER_TYPES = ["tagging", "multiple_choice", "question_answering", "masked_lm"]
MATRIX = (
    [(t, a) for t in SEQUENCE_TYPES for a in ("bert", "gpt2", "llama")]
    + [(t, a) for t in ENCODER_TYPES for a in ENCODERS if a != "xlm-roberta"]  # same code as roberta
    + [("causal_lm", a) for a in DECODERS]
)


def test_every_head_type_is_registered():
    assert set(EXPECTED) <= set(HEADS)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("head_type, arch", MATRIX)
def test_outputs_losses_and_training_touch_only_adapter_and_head(head_type, arch):
    model = adapterhub.init(build(arch))
    model.add_adapter("task", config="pfeiffer[reduction_factor=4]")
    add(model, head_type)
    model.train_adapter("task")
    inputs = inputs_for(head_type)
    out = model(**inputs, **targets(head_type, inputs))
    kind, shape = EXPECTED[head_type]
    assert type(out) is kind
    if shape is None:
        assert out.start_logits.shape == out.end_logits.shape == (3, 7)
    else:
        assert tuple(out.logits.shape) == shape
    assert out.loss is not None and out.loss.dim() == 0 and torch.isfinite(out.loss)
    # Gemma 2/3 on transformers 4.x make no cache in training mode
    no_cache = arch in ("gemma2", "gemma3_text") and int(transformers.__version__.split(".")[0]) < 5
    if head_type == "causal_lm" and not no_cache:
        assert out.past_key_values is not None
    # a few optimizer steps change the adapter and the head and nothing else
    before = snapshot(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss = model(**inputs, **targets(head_type, inputs)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {k for k, v in snapshot(model).items() if not torch.equal(v, before[k])}
    assert any(k.startswith("_adapterhub.adapters.task.") for k in changed)
    if any(True for _ in model.heads["task"].parameters()):  # a tied causal LM head has none
        assert any(k.startswith("_adapterhub.heads.task.") for k in changed)
    assert all(k.startswith(("_adapterhub.adapters.task.", "_adapterhub.heads.task.")) for k in changed), (
        changed
    )
    # without labels: no loss, same logits shape
    model.eval()
    assert model(**inputs).loss is None


@pytest.mark.parametrize(
    "head_type, arch",
    [(t, "bert") for t in EXPECTED if t != "causal_lm"] + [("causal_lm", "gpt2"), ("causal_lm", "llama")],
)
def test_save_load_round_trip_gives_identical_outputs(head_type, arch, tmp_path):
    model = adapterhub.init(build(arch))
    model.add_adapter("task", config="houlsby[reduction_factor=4]")
    head = add(model, head_type)
    perturb(model._adapterhub.adapters["task"])
    perturb(head, std=0.1, seed=3)
    model.set_active_adapters("task")
    inputs = inputs_for(head_type)
    expected = model(**inputs)
    model.save_adapter(tmp_path, "task")

    other = adapterhub.init(build(arch))
    assert other.load_adapter(tmp_path, set_active=True) == "task"
    got = other(**inputs)
    for field in ("logits", "start_logits", "end_logits"):
        if getattr(expected, field, None) is not None:
            assert torch.allclose(getattr(got, field), getattr(expected, field), atol=1e-6)
    loaded = other.heads["task"]
    assert loaded.head_type == head_type and loaded.options() == head.options()
    assert loaded.id2label == head.id2label
    meta = json.loads((tmp_path / "head_config.json").read_text())
    assert meta["type"] == head_type
    saved = set(load_file(tmp_path / "head.safetensors"))
    assert saved == set(head.state_dict())
    if head_type in ("causal_lm", "masked_lm"):  # the tied embedding matrix is not saved
        assert not any(
            VOCAB in t.shape and 32 in t.shape for t in load_file(tmp_path / "head.safetensors").values()
        )


def test_label_maps_are_kept(tmp_path):
    model = adapterhub.init(build("bert"))
    model.add_adapter("ner")
    model.add_tagging_head("ner", num_labels=3, id2label=IDS)
    model.save_adapter(tmp_path, "ner")
    other = adapterhub.init(build("bert"))
    other.load_adapter(tmp_path)
    assert other.heads["ner"].id2label == IDS
    assert other.heads["ner"].label2id == {"O": 0, "B-PER": 1, "I-PER": 2}
    meta = json.loads((tmp_path / "head_config.json").read_text())
    assert meta["id2label"] == {"0": "O", "1": "B-PER", "2": "I-PER"}


def test_tagging_ignores_padding_and_minus_100():
    model = adapterhub.init(build("bert"))
    model.add_adapter("t", set_active=True)
    model.add_tagging_head("t", num_labels=3)
    inputs = make_inputs()
    labels = torch.randint(0, 3, (3, 7))
    base = model(**inputs, labels=labels).loss
    changed = labels.clone()
    changed[2, 5:] = 2 - changed[2, 5:]  # padding positions of row 2
    assert torch.allclose(model(**inputs, labels=changed).loss, base)
    ignored = labels.clone()
    ignored[0, 1] = -100
    logits = model(**inputs).logits
    mask = (ignored != -100) & (inputs["attention_mask"] == 1)
    manual = torch.nn.functional.cross_entropy(logits[mask], ignored[mask])
    assert torch.allclose(model(**inputs, labels=ignored).loss, manual, atol=1e-6)


def test_qa_loss_follows_transformers():
    model = adapterhub.init(build("bert"))
    model.add_adapter("qa", set_active=True)
    model.add_qa_head("qa")
    inputs = make_inputs()
    starts, ends = torch.tensor([1, 2, 30]), torch.tensor([2, 4, 3])  # 30: outside the sequence, ignored
    out = model(**inputs, start_positions=starts, end_positions=ends)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out.start_logits[:2], starts[:2]) + ce(out.end_logits, ends)) / 2
    assert torch.allclose(out.loss, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["base", "multiple_choice"])
def test_multiple_choice_on_bare_and_multiple_choice_models(kind):
    import transformers

    from tiny_models import tiny_config

    torch.manual_seed(0)
    config = tiny_config("bert")
    raw = (transformers.AutoModel if kind == "base" else transformers.AutoModelForMultipleChoice).from_config(
        config
    )
    model = adapterhub.init(raw.eval())
    model.add_adapter("mc", set_active=True)
    model.add_multiple_choice_head("mc", num_choices=3)
    inputs = inputs_for("multiple_choice")
    out = model(**inputs, labels=torch.tensor([1, 0]))
    assert type(out) is MultipleChoiceModelOutput and out.logits.shape == (2, 3)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0])))
    # each choice is scored on its own: flat rows of one example give the same scores
    if kind == "base":  # (a ...ForMultipleChoice model itself insists on 3-d inputs)
        flat = model(input_ids=inputs["input_ids"][0], attention_mask=inputs["attention_mask"][0]).logits
        assert flat.shape == (1, 3)
        assert torch.allclose(flat[0], out.logits[0], atol=1e-6)


def test_labels_are_hidden_from_the_built_in_head():
    model = adapterhub.init(build("bert", "classification", num_labels=2))
    model.add_adapter("a")
    model.add_tagging_head("a", num_labels=5)
    model.add_qa_head("q")
    model.set_active_adapters("a")
    inputs = make_inputs()
    # (batch, seq) labels would break the built-in sequence classifier's loss; the flexible head gets them
    out = model(**inputs, labels=torch.randint(0, 5, (3, 7)))
    assert type(out) is TokenClassifierOutput and out.loss is not None
    model.active_head = "q"
    out = model(**inputs, start_positions=torch.tensor([0, 1, 2]), end_positions=torch.tensor([1, 2, 3]))
    assert type(out) is QuestionAnsweringModelOutput and out.loss is not None
    model.active_head = None
    model.set_active_adapters(None)
    out = model(**inputs, labels=torch.tensor([0, 1, 0]))  # the built-in head is back
    assert type(out) is SequenceClassifierOutput and out.logits.shape == (3, 2)


def test_several_named_heads_follow_the_active_adapter():
    model = adapterhub.init(build("bert"))
    model.add_adapter("sst")
    model.add_adapter("ner")
    model.add_classification_head("sst", num_labels=2)
    model.add_tagging_head("ner", num_labels=3)
    inputs = make_inputs()
    model.set_active_adapters("sst")
    assert model.active_head == "sst" and model(**inputs).logits.shape == (3, 2)
    model.set_active_adapters("ner")
    assert model.active_head == "ner" and model(**inputs).logits.shape == (3, 7, 3)
    model.active_head = "sst"
    assert model(**inputs).logits.shape == (3, 2)
    model.delete_head("sst")
    assert model.active_head == "ner"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generate_with_a_flexible_causal_lm_head_on_a_bare_decoder(arch):
    model = adapterhub.init(build(arch))
    assert not hasattr(model, "generate")
    model.add_adapter("lm", config="houlsby", set_active=True)
    model.add_causal_lm_head("lm")
    perturb(model._adapterhub.adapters["lm"])
    prompt = torch.tensor([[5, 6, 7]])
    out = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 8)
    seq = prompt
    for _ in range(5):  # greedy decoding without the cache gives the same tokens
        logits = model(seq, use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_lm_head_reuses_the_models_own_output_matrix(arch):
    model = adapterhub.init(build(arch, "causal_lm"))
    inputs = make_inputs()
    own = model(**inputs).logits
    model.add_adapter("lm", set_active=True)  # near-identity adapter: same hidden states up to ~1e-3
    model.add_causal_lm_head("lm")
    with model.adapter_setup(None):
        model.active_head = "lm"
        flexible = model(**inputs).logits
    assert torch.allclose(flexible, own, atol=1e-5)
    assert list(model.heads["lm"].state_dict()) == []  # nothing to save: the matrix is the model's


def test_tied_matrix_is_not_trained_unless_asked():
    model = adapterhub.init(build("gpt2"))
    model.add_adapter("lm")
    model.add_causal_lm_head("lm")
    model.train_adapter("lm")
    embedding = model.get_input_embeddings().weight
    assert not embedding.requires_grad
    before = embedding.detach().clone()
    inputs = make_inputs()
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert embedding.grad is None and torch.equal(embedding, before)
    # asked for: an untied head owns a copy of the matrix, saved and trained with it
    model.add_causal_lm_head("own", tie_weights=False)
    assert torch.equal(model.heads["own"].decoder.weight, before)
    assert "decoder.weight" in model.heads["own"].state_dict()


def test_masked_lm_head_on_electra_projects_to_the_embedding_width():
    model = adapterhub.init(build("electra"))  # hidden 32, embeddings 16
    model.add_adapter("mlm", set_active=True)
    head = model.add_masked_lm_head("mlm")
    assert head.options()["embedding_size"] == 16
    assert model(**make_inputs()).logits.shape == (3, 7, VOCAB)
    with pytest.raises(adapterhub.ConfigError, match="layers=2"):
        model.add_causal_lm_head("c", layers=1)


def test_return_dict_false_gives_a_tuple():
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", set_active=True)
    model.add_classification_head("a", num_labels=3)
    out = model(**make_inputs(), labels=torch.tensor([0, 1, 2]), return_dict=False)
    assert isinstance(out, tuple) and out[0].dim() == 0 and out[1].shape == (3, 3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.add_head("h", "clasification"), "did you mean 'classification'"),
        (lambda m: m.add_classification_head("h", num_labels=0), "num_labels"),
        (lambda m: m.add_classification_head("h", pooling="max"), "pooling"),
        (lambda m: m.add_classification_head("h", activation="sine"), "activation"),
        (lambda m: m.add_classification_head("h", dropout=1.5), "dropout"),
        (lambda m: m.add_classification_head("h", num_labels=3, id2label={0: "a", 2: "b"}), "id2label"),
        (lambda m: m.add_tagging_head("h", num_labels=3, layer=2), "Unknown option"),
        (lambda m: m.add_head("h", "regression", num_labels=2), "regression"),
        (lambda m: m.add_multilabel_head("h", num_labels=1), "num_labels >= 2"),
        (lambda m: m.add_qa_head("h", layers=0), "layers"),
        (lambda m: m.add_masked_lm_head("h", vocab_size=50), "vocab|shape"),
        (lambda m: m.add_head("bad name", "tagging"), "Invalid head name"),
    ],
)
def test_bad_options_raise_clear_errors(call, match):
    model = adapterhub.init(build("bert"))
    with pytest.raises(adapterhub.AdapterHubError, match=match):
        call(model)
    assert model.heads == {}


def test_a_head_tied_to_another_vocabulary_is_refused_on_load(tmp_path):
    model = adapterhub.init(build("bert"))
    model.add_adapter("m")
    model.add_masked_lm_head("m")
    model.save_adapter(tmp_path, "m")
    other = adapterhub.init(build("bert", vocab_size=120))
    with pytest.raises(adapterhub.IncompatibleModelError, match="vocabulary"):
        other.load_adapter(tmp_path)
    assert other.adapters == {}


def test_static_lm_head_matrix_is_not_part_of_the_built_in_head():
    from adapterhub.heads import static_head_parameters

    model = adapterhub.init(build("llama", "causal_lm"))  # untied lm_head
    assert "lm_head.weight" not in static_head_parameters(model)
    model.add_adapter("a")
    model.train_adapter("a")
    assert not model.lm_head.weight.requires_grad
