"""LoRA's ``bias`` option (peft's): ``"lora_only"`` / ``"all"`` keep trainable copies of the targets' / every bias
of the model, used while the adapter is active; which parameters train, and peft's files both ways (outputs, keys
and values)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.spec.composition import BatchSplit, Parallel, Stack
from tiny_models import build, make_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)


def _logits(model, inputs=None):
    with torch.no_grad():
        out = model(**(inputs or make_inputs()))
    return out.logits


def _peft(bias, kind="classification", **options):
    theirs = peft.get_peft_model(
        build("bert", kind),
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], bias=bias, **options),
    ).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in theirs.parameters():
            if param.requires_grad:  # the LoRA weights and the biases peft trains
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return theirs


def _held(bias):
    model = adapterhub.init(build("bert", "classification")).eval()
    model.add_adapter("a", {"method": "lora", "r": 2, "target_modules": ["query", "value"], "bias": bias})
    return model


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_the_biases_peft_trains_are_the_ones_held(bias):
    theirs = peft.get_peft_model(
        build("bert", "classification"), peft.LoraConfig(r=2, target_modules=["query", "value"], bias=bias)
    )
    peft_biases = {
        n.removeprefix("base_model.model.").removesuffix(".bias").removesuffix(".base_layer")
        for n, p in theirs.named_parameters()
        if p.requires_grad and n.endswith(".bias")
    }
    ours = _held(bias)
    assert set(ours._adapterhub.adapters["a"].bias_paths()) == peft_biases
    ours.train_adapter("a")
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert {f"_adapterhub.adapters.a.biases.{p.replace('.', ':')}" for p in peft_biases} <= trainable
    assert not any(n.startswith("bert.") for n in trainable)  # the model's own biases stay frozen


def test_held_biases_replace_the_models_while_active_and_train(tmp_path):
    model = _held("all")
    inputs = make_inputs()
    base = _logits(model, inputs)
    original = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    model.set_active_adapters("a")
    assert torch.equal(_logits(model, inputs), base)  # copies of the model's own biases: the identity
    model.train_adapter("a")
    labels = torch.zeros(3, dtype=torch.long)
    model(**inputs, labels=labels).loss.backward()
    held = model._adapterhub.adapters["a"].held_bias("bert.encoder.layer.0.output.LayerNorm")
    assert held.grad is not None and held.grad.abs().sum() > 0
    torch.optim.SGD(model._adapterhub.adapters["a"].parameters(), lr=1.0).step()  # the adapter's part
    model.eval()
    trained = _logits(model, inputs)
    assert (trained - base).abs().max() > 1e-4
    model.save_adapter(tmp_path / "a", "a")
    again = adapterhub.init(build("bert", "classification")).eval()
    again.load_adapter(tmp_path / "a", set_active=True)
    torch.testing.assert_close(_logits(again, inputs), trained, atol=1e-6, rtol=0)
    model.set_active_adapters(None)
    torch.testing.assert_close(_logits(model, inputs), base, atol=1e-6, rtol=0)
    for name, param in model.named_parameters():
        if name in original:
            assert torch.equal(param, original[name]), name


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_peft_files_both_ways(tmp_path, bias):
    theirs = _peft(bias)
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build("bert", "classification")).eval()
    base = _logits(ours, inputs)
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert ours.adapters["p"].bias == bias
    torch.testing.assert_close(_logits(ours, inputs), _logits(theirs, inputs), atol=1e-5, rtol=0)
    ours.set_active_adapters(None)
    assert torch.equal(_logits(ours, inputs), base)  # the model's own biases are untouched
    ours.set_active_adapters("p")
    ours.save_adapter(tmp_path / "x", "p", layout="peft", with_head=False)  # peft saved no classifier
    assert json.loads((tmp_path / "x" / "adapter_config.json").read_text())["bias"] == bias
    saved, written = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "p", tmp_path / "x"))
    assert sorted(written) == sorted(saved)
    for key, tensor in saved.items():
        assert torch.equal(written[key], tensor), key
    back = peft.PeftModel.from_pretrained(build("bert", "classification"), tmp_path / "x").eval()
    torch.testing.assert_close(_logits(back, inputs), _logits(ours, inputs), atol=1e-5, rtol=0)
    again = adapterhub.init(build("bert", "classification")).eval()
    again.load_adapter(tmp_path / "x", load_as="x", set_active=True)
    torch.testing.assert_close(_logits(again, inputs), _logits(ours, inputs), atol=1e-6, rtol=0)


def test_all_with_modules_to_save_reads_peft(tmp_path):
    theirs = _peft("all", modules_to_save=["classifier"])
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(build("bert", "classification")).eval()
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    held = ours._adapterhub.adapters["p"].bias_paths()
    assert (
        "classifier" not in held and "bert.pooler.dense" in held
    )  # the copy of the classifier holds its bias
    torch.testing.assert_close(_logits(ours), _logits(theirs), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    back = peft.PeftModel.from_pretrained(build("bert", "classification"), tmp_path / "x").eval()
    torch.testing.assert_close(_logits(back), _logits(ours), atol=1e-5, rtol=0)


def test_spec_targets_with_lora_only_write_peft(tmp_path):
    ours = adapterhub.init(build("bert", "classification")).eval()
    ours.add_adapter(
        "s", {"method": "lora", "r": 2, "targets": ["q", "v"], "bias": "lora_only"}, set_active=True
    )
    perturb(ours._adapterhub.adapters["s"], std=0.3, seed=3)
    assert len(ours._adapterhub.adapters["s"].bias_paths()) == 4
    ours.save_adapter(tmp_path / "x", "s", layout="peft")
    assert "base_model.model.bert.encoder.layer.1.attention.self.value.base_layer.bias" in load_file(
        tmp_path / "x" / "adapter_model.safetensors"
    )
    back = peft.PeftModel.from_pretrained(build("bert", "classification"), tmp_path / "x").eval()
    torch.testing.assert_close(_logits(back), _logits(ours), atol=1e-5, rtol=0)
    gpt2 = adapterhub.init(build("gpt2"))
    with pytest.raises(ConfigError, match="slice of a fused projection"):
        gpt2.add_adapter("f", {"method": "lora", "targets": ["q"], "bias": "lora_only"})


def test_row_blocks_compositions_and_merging():
    model = adapterhub.init(build("bert", "classification")).eval()
    for name, seed in (("a", 1), ("b", 2)):
        model.add_adapter(name, {"method": "lora", "r": 2, "target_modules": ["query"], "bias": "lora_only"})
        perturb(model._adapterhub.adapters[name], std=0.3, seed=seed)
    inputs = make_inputs()
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        alone[name] = _logits(model, inputs)
    model.set_active_adapters(BatchSplit("b", "a", "b", batch_sizes=(1, 1, 1)))
    mixed = _logits(model, inputs)
    for row, name in enumerate(("b", "a", "b")):
        torch.testing.assert_close(mixed[row], alone[name][row], atol=1e-5, rtol=0)
    model.set_active_adapters(Parallel("a", "b"))
    with torch.no_grad():
        out = model(**inputs)
    torch.testing.assert_close(out.logits[0], alone["a"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits[1], alone["b"], atol=1e-5, rtol=0)
    model.set_active_adapters(Stack("a", "b"))
    with pytest.raises(
        ConfigError, match=r"each keep a copy of 'bert\.encoder\.layer\.0\.attention\.self\.query'"
    ):
        _logits(model, inputs)
    model.set_active_adapters("a")
    model.merge_adapter("a")  # its held biases go into the model (tests/compat/test_peft_merge_held.py)
    torch.testing.assert_close(_logits(model, inputs), alone["a"], atol=1e-5, rtol=0)
    model.unmerge_adapter("a")
    with pytest.raises(ConfigError, match=r"cannot combine \['a', 'b'\].*option bias"):
        model.average_adapter("ab", ["a", "b"])


def test_bad_value_is_refused():
    with pytest.raises(ConfigError, match="bias"):
        _held("everything")
