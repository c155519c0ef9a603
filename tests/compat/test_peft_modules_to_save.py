"""``modules_to_save``: full trainable copies of modules (a classifier) kept by a LoRA adapter, used while it is
active; in our format, and in peft's both ways with identical outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

import adapterhub
from adapterhub.errors import ConfigError, IncompatibleModelError
from adapterhub.spec.composition import Average, BatchSplit, Parallel, Stack
from tiny_models import build, make_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

CONFIG = {"method": "lora", "r": 4, "target_modules": ["query", "value"], "modules_to_save": ["classifier"]}


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _ours():
    return adapterhub.init(build("bert", "classification")).eval()


def _perturbed(model, name="a"):
    model.add_adapter(name, CONFIG, set_active=True)
    perturb(model._adapterhub.adapters[name], std=0.3, seed=4)
    return model


def test_copy_replaces_the_module_while_active_and_trains_alone(tmp_path):
    model = _ours()
    inputs = make_inputs()
    base = _logits(model, inputs)
    original = model.classifier.weight.detach().clone()
    _perturbed(model)
    adapted = _logits(model, inputs)
    assert (adapted - base).abs().max() > 1e-3
    model.set_active_adapters(None)
    assert torch.equal(_logits(model, inputs), base)  # the original classifier when inactive
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "_adapterhub.adapters.a.saved.classifier.weight" in trainable
    assert not any(n.startswith("classifier.") for n in trainable)
    labels = torch.zeros(inputs["input_ids"].shape[0], dtype=torch.long)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    assert model._adapterhub.adapters["a"].saved_module("classifier").weight.grad is not None
    assert model.classifier.weight.grad is None and torch.equal(model.classifier.weight, original)
    model.eval()
    model.save_adapter(tmp_path / "a", "a")
    again = _ours()
    again.load_adapter(tmp_path / "a", set_active=True)
    torch.testing.assert_close(_logits(again, inputs), adapted, atol=1e-6, rtol=0)
    no_copies = _ours()
    no_copies.load_adapter(tmp_path / "a", with_head=False, set_active=True)
    assert no_copies.adapters["a"].modules_to_save is None


def test_peft_file_loads_with_equal_outputs_and_keeps_the_original(tmp_path):
    theirs = peft.get_peft_model(
        build("bert", "classification"),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]),
    ).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(tmp_path / "p")
    assert "base_model.model.classifier.weight" in load_file(tmp_path / "p" / "adapter_model.safetensors")
    ours = _ours()
    inputs = make_inputs()
    base = _logits(ours, inputs)
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert ours.adapters["p"].modules_to_save == ("classifier",)
    torch.testing.assert_close(_logits(ours, inputs), _logits(theirs, inputs), atol=1e-5, rtol=0)
    ours.set_active_adapters(None)
    assert torch.equal(_logits(ours, inputs), base)  # the model's own classifier is untouched


def test_ours_written_as_peft_loads_identically(tmp_path):
    ours = _perturbed(_ours())
    inputs = make_inputs()
    ours.save_adapter(tmp_path / "x", "a", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert meta["modules_to_save"] == ["classifier"]
    theirs = peft.PeftModel.from_pretrained(build("bert", "classification"), tmp_path / "x").eval()
    torch.testing.assert_close(_logits(theirs, inputs), _logits(ours, inputs), atol=1e-5, rtol=0)
    back = _ours()
    back.load_adapter(tmp_path / "x", load_as="x", set_active=True)
    torch.testing.assert_close(_logits(back, inputs), _logits(ours, inputs), atol=1e-5, rtol=0)


def test_other_head_size_is_refused_naming_it(tmp_path):
    _perturbed(_ours()).save_adapter(tmp_path / "a", "a")
    three = adapterhub.init(build("bert", "classification", num_labels=3))
    with pytest.raises(IncompatibleModelError, match=r"copy of 'classifier'.*with_head=False"):
        three.load_adapter(tmp_path / "a")
    assert not three._adapterhub.adapters


def test_bad_selections_and_setups_raise():
    model = _ours()
    with pytest.raises(ConfigError, match="modules_to_save names 'nothing'"):
        model.add_adapter("x", {**CONFIG, "modules_to_save": ["nothing"]})
    with pytest.raises(ConfigError, match="both a LoRA target and inside a module of modules_to_save"):
        model.add_adapter("x", {**CONFIG, "modules_to_save": ["attention"]})
    with pytest.raises(ConfigError, match="non-empty list of module names"):
        model.add_adapter("x", {**CONFIG, "modules_to_save": []})
    _perturbed(model, "a")
    _perturbed(model, "b")
    inputs = make_inputs()
    for setup in (Stack("a", "b"), BatchSplit(Stack("a", "b"), None, batch_sizes=(2, 1))):
        model.set_active_adapters(setup)
        with pytest.raises(ConfigError, match="each keep a copy of 'classifier'"):
            _logits(model, inputs)
    model.set_active_adapters(BatchSplit(Average("a", "b"), None, batch_sizes=(2, 1)))
    with pytest.raises(ConfigError, match="inside Average"):
        _logits(model, inputs)
    model.add_adapter("plain", {"method": "lora", "target_modules": ["key"]})
    model.set_active_adapters(Stack("plain", "a"))
    assert _logits(model, inputs).shape == (inputs["input_ids"].shape[0], 2)


def _two_with_copies():
    model = _ours()
    _perturbed(model, "a")
    model.add_adapter("b", {**CONFIG, "r": 2}, set_active=True)
    perturb(model._adapterhub.adapters["b"], std=0.3, seed=9)
    model.add_adapter("plain", {"method": "lora", "r": 2, "target_modules": ["key"]})
    perturb(model._adapterhub.adapters["plain"], std=0.3, seed=11)
    return model


def _alone(model, name, inputs):
    model.set_active_adapters(name)
    return _logits(model, inputs)


def test_batch_split_rows_use_their_adapters_copy():
    model = _two_with_copies()
    inputs = make_inputs()
    alone = {name: _alone(model, name, inputs) for name in ("a", "b", "plain")}
    model.set_active_adapters(None)
    alone[None] = _logits(model, inputs)
    for children in (("a", "b", None), ("b", "plain", "a"), (None, "a", "a")):
        model.set_active_adapters(BatchSplit(*children, batch_sizes=(1, 1, 1)))
        mixed = _logits(model, inputs)
        for row, name in enumerate(children):
            torch.testing.assert_close(mixed[row], alone[name][row], atol=1e-5, rtol=0)
    model.set_active_adapters(BatchSplit(Stack("plain", "b"), "a", batch_sizes=(2, 1)))
    mixed = _logits(model, inputs)
    model.set_active_adapters(Stack("plain", "b"))
    torch.testing.assert_close(mixed[:2], _logits(model, inputs)[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[2], alone["a"][2], atol=1e-5, rtol=0)


def test_parallel_branches_use_their_adapters_copy():
    model = _two_with_copies()
    inputs = make_inputs()
    model.set_active_adapters(Parallel("a", "plain", "b"))
    with torch.no_grad():
        out = model(**inputs)
    for i, name in enumerate(("a", "plain", "b")):
        torch.testing.assert_close(out.logits[i], _alone(model, name, inputs), atol=1e-5, rtol=0)


def test_parallel_copy_before_the_batch_is_replicated_is_refused():
    model = _ours()
    for name in ("a", "b"):
        model.add_adapter(name, {**CONFIG, "modules_to_save": ["word_embeddings"]})
    model.set_active_adapters(Parallel("a", "b"))
    with pytest.raises(ConfigError, match=r"before Parallel.*replicates the batch"):
        model(**make_inputs())
