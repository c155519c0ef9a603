"""(IA)³ targeted by module name (peft's IA3Config ``target_modules`` / ``feedforward_modules``): equal to peft,
peft's files both ways (outputs, keys and values), spec points on the fast path, composition and merging."""

import json

import pytest
import torch
from safetensors.torch import load_file

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.spec.composition import BatchSplit, Stack
from tiny_models import build, make_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

CASES = {
    # BERT: spec points (key, value, both output.dense) and the pooler, which no spec point names
    "bert": (["key", "value", "output.dense", "pooler.dense"], ["output.dense"]),
    # GPT-2: the fused c_attn (a module point) and Conv1D modules, the MLP's c_proj scaled on its input
    "gpt2": (["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"], ["mlp.c_proj"]),
}


def _out(model, inputs=None):
    with torch.no_grad():
        out = model(**(inputs or make_inputs()))
    return out.last_hidden_state


def _peft(kind):
    targets, ff = CASES[kind]
    theirs = peft.get_peft_model(
        build(kind), peft.IA3Config(target_modules=targets, feedforward_modules=ff)
    ).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in theirs.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return theirs


@pytest.mark.parametrize("kind", sorted(CASES))
def test_peft_files_both_ways(tmp_path, kind):
    theirs = _peft(kind)
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build(kind))
    base = _out(ours, inputs)
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    # BERT's pooler is no spec projection: read by name; GPT-2's modules all are: read as spec points
    assert (ours.adapters["p"].target_modules is not None) == (kind == "bert")
    torch.testing.assert_close(_out(ours, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)
    ours.set_active_adapters(None)
    assert torch.equal(_out(ours, inputs), base)
    ours.set_active_adapters("p")
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "IA3" and meta["feedforward_modules"]
    saved, written = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "p", tmp_path / "x"))
    assert sorted(written) == sorted(saved)
    for key, tensor in saved.items():
        assert torch.equal(written[key], tensor), key
    back = peft.PeftModel.from_pretrained(build(kind), tmp_path / "x").eval()
    torch.testing.assert_close(_out(back, inputs), _out(ours, inputs), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "o", "p")  # our own layout
    again = adapterhub.init(build(kind))
    again.load_adapter(tmp_path / "o", set_active=True)
    torch.testing.assert_close(_out(again, inputs), _out(ours, inputs), atol=1e-6, rtol=0)


def test_added_by_name_equals_peft_and_uses_spec_points():
    theirs = _peft("bert")
    ours = adapterhub.init(build("bert"))
    targets, ff = CASES["bert"]
    ours.add_adapter(
        "a", {"method": "ia3", "target_modules": targets, "feedforward_modules": ff}, set_active=True
    )
    module = ours._adapterhub.adapters["a"]
    assert {p for _, p in module.points(0)} == {"k", "v", "attn_out", "ffn_out"}
    assert module.points(-1) == (("module", "pooler.dense"),)
    assert sorted(module.layers["0"]) == ["in_attn_out", "in_ffn_out", "out_k", "out_v"]
    with torch.no_grad():  # copy peft's vectors in
        for name, param in theirs.named_parameters():
            if "ia3_l" in name:
                path = name.removeprefix("base_model.model.").split(".ia3_l")[0]
                point = {v: k for k, v in module.module_paths().items()}[path]
                side = "in" if param.shape[0] == 1 else "out"
                key = f"{side}_{point[1].replace('.', ':')}"
                target = module.by_name[key] if point[0] == -1 else module.layers[str(point[0])][key]
                target.copy_(param.reshape(-1))
    torch.testing.assert_close(_out(ours), _out(theirs), atol=1e-5, rtol=0)
    ours.merge_adapter("a")
    torch.testing.assert_close(_out(ours), _out(theirs), atol=1e-5, rtol=0)
    ours.unmerge_adapter("a")


def test_composition_and_errors():
    model = adapterhub.init(build("bert"))
    targets, ff = CASES["bert"]
    for name, seed in (("a", 1), ("b", 2)):
        model.add_adapter(name, {"method": "ia3", "target_modules": targets, "feedforward_modules": ff})
        perturb(model._adapterhub.adapters[name], std=0.3, seed=seed)
        with torch.no_grad():
            for param in model._adapterhub.adapters[name].parameters():
                param.add_(1.0)
    inputs = make_inputs()
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        alone[name] = _out(model, inputs)
    model.set_active_adapters(BatchSplit("b", "a", "b", batch_sizes=(1, 1, 1)))
    mixed = _out(model, inputs)
    for row, name in enumerate(("b", "a", "b")):
        torch.testing.assert_close(mixed[row], alone[name][row], atol=1e-5, rtol=0)
    model.set_active_adapters(Stack("a", "b"))
    stacked = _out(model, inputs)
    model.merge_adapter("a")
    model.merge_adapter("b")  # Stack(a, b) equals merging a then b
    torch.testing.assert_close(_out(model, inputs), stacked, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="subset of target_modules"):
        model.add_adapter("x", {"method": "ia3", "target_modules": ["key"], "feedforward_modules": ["dense"]})
    with pytest.raises(ConfigError, match="one or the other"):
        model.add_adapter("x", {"method": "ia3", "target_modules": ["key"], "targets": ["q"]})
    with pytest.raises(ConfigError, match="needs target_modules"):
        model.add_adapter("x", {"method": "ia3", "feedforward_modules": ["dense"]})
    with pytest.raises(ConfigError, match=r"scales nn\.Linear and Conv1D"):
        model.add_adapter("x", {"method": "ia3", "target_modules": ["word_embeddings"]})


def test_spec_less_model_takes_ia3_by_name():
    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    model = adapterhub.init(MLP())
    model.add_adapter(
        "a", {"method": "ia3", "target_modules": ["fc1", "fc2"], "feedforward_modules": ["fc2"]}
    )
    model.set_active_adapters("a")
    module = model._adapterhub.adapters["a"]
    with torch.no_grad():
        module.by_name["out_fc1"].fill_(2.0)  # (16,): fc1's output
        module.by_name["in_fc2"].fill_(3.0)  # (16,): fc2's input
    x = torch.randn(3, 8)
    with torch.no_grad():
        model.set_active_adapters(None)  # the bare modules
        want = model.fc2(3.0 * torch.relu(2.0 * model.fc1(x)))
        assert not torch.allclose(model(x), want)
        model.set_active_adapters("a")
        torch.testing.assert_close(model(x), want, atol=1e-6, rtol=0)
    with pytest.raises(Exception, match="by spec point"):
        model.add_adapter("b", {"method": "ia3"})


def test_by_name_file_with_modules_to_save_and_a_stray_key(tmp_path):
    """The by-name reader keeps peft's modules_to_save copy (the classifier, perturbed: the outputs need it) beside
    the vectors, and refuses a weight outside base_model.model. by name."""
    from safetensors.torch import save_file

    from adapterhub.errors import AdapterFileError

    targets, ff = CASES["bert"]
    config = peft.IA3Config(target_modules=targets, feedforward_modules=ff, modules_to_save=["classifier"])
    theirs = peft.get_peft_model(build("bert", "classification"), config).eval()
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in theirs.parameters():
            if param.requires_grad:  # the vectors and the classifier's copy
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build("bert", "classification"))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert ours.adapters["p"].target_modules is not None
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(**inputs).logits, theirs(**inputs).logits, atol=1e-5, rtol=0)
    weights = load_file(tmp_path / "p" / "adapter_model.safetensors")
    save_file({**weights, "stray.weight": torch.zeros(2)}, tmp_path / "p" / "adapter_model.safetensors")
    with pytest.raises(AdapterFileError, match=r"'stray.weight'.*is not under 'base_model.model.'"):
        adapterhub.init(build("bert", "classification")).load_adapter(tmp_path / "p")
