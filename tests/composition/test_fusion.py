"""AdapterFusion: init, regulariser, training, save/load, the `adapters` library's fusion files, activations."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import adapterhub
from adapterhub.errors import AdapterExistsError, AdapterFileError, AdapterNotFoundError, ConfigError
from adapterhub.runtime.fusion import (
    FusionActivations,
    FusionConfig,
    plot_fusion_heatmap,
    record_fusion_attentions,
)
from adapterhub.spec.composition import Fuse, Stack
from tiny_models import build, make_inputs, perturb

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "adapters_lib" / "bert_fusion"
FUSE = Fuse("a", "b", "c")


def make_model(kind="base", heads=(), **overrides):
    model = adapterhub.init(build("bert", kind, **overrides))
    for i, name in enumerate("abc"):
        model.add_adapter(name, config="pfeiffer")
        perturb(model._adapterhub.adapters[name], std=0.2, seed=i)
    for head in heads:
        model.add_classification_head(head, num_labels=3)
    return model


def no_dropout_model(**kwargs):
    return make_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kwargs)


# ------------------------------------------------------------------------------------------------ init


def test_initialisation_follows_the_paper():
    model = make_model()
    fusion = model.add_adapter_fusion(FUSE)
    assert fusion.site_keys() == [(0, "ffn"), (1, "ffn")]
    for layer, site in fusion.site_keys():
        f = fusion.layer_at(layer, site)
        value = f.value.weight.detach()
        assert torch.equal(torch.diagonal(value), torch.ones(32))
        off = value[~torch.eye(32, dtype=torch.bool)]
        assert torch.equal(off, torch.full_like(off, 1e-6))
        assert f.value.bias is None
        for linear in (f.query, f.key):
            assert linear.weight.std().item() == pytest.approx(0.02, rel=0.25)  # random
            assert torch.equal(linear.bias, torch.zeros(32))
    assert not torch.equal(fusion.layer_at(0, "ffn").query.weight, fusion.layer_at(0, "ffn").key.weight)
    static = model.add_adapter_fusion(Fuse("a", "b"), config="static")
    assert static.layer_at(0, "ffn").value is None and static.regularization_loss() is None
    assert model.fusions["a,b"] == FusionConfig(value=False, value_initialized=False, regularization=False)


def test_fresh_dynamic_fusion_averages_nearly_uniformly(inputs):
    model = make_model()
    model.add_adapter_fusion(FUSE)
    with torch.no_grad(), model.adapter_setup(FUSE), record_fusion_attentions() as records:
        model(**inputs)
    for _, _, _, probs in records:
        assert probs.shape == (3, 7, 3)
        assert torch.allclose(probs.sum(-1), torch.ones(3, 7))


def test_bad_fusion_configs_are_refused():
    model = make_model()
    with pytest.raises(ConfigError, match=r"Unknown fusion config 'dynamc'.*did you mean 'dynamic'"):
        model.add_adapter_fusion(FUSE, config="dynamc")
    with pytest.raises(ConfigError, match="reg_weight"):
        FusionConfig(reg_weight=-1)
    with pytest.raises(ConfigError, match="Valid keys"):
        model.add_adapter_fusion(FUSE, config={"valu": True})
    with pytest.raises(AdapterNotFoundError, match="No adapter named 'z'"):
        model.add_adapter_fusion(Fuse("a", "z"))
    model.add_adapter_fusion(FUSE)
    with pytest.raises(AdapterExistsError, match="overwrite_ok"):
        model.add_adapter_fusion("a,b,c")


# ------------------------------------------------------------------------------------------------ training


def test_regulariser_is_added_to_the_loss_while_training(inputs):
    model = no_dropout_model(heads=("t",))
    model.add_adapter_fusion(FUSE, config={"dropout": 0.0})
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with torch.no_grad():
        for _, f in model._adapterhub.fusions["a,b,c"].layers.items():
            f["ffn"].value.weight.add_(0.1 * torch.randn(32, 32))
    labels = torch.tensor([0, 1, 2])
    model.train_adapter_fusion(FUSE, head="t")
    train_loss = model(**inputs, labels=labels).loss
    reg = model.fusion_regularization_loss()
    expected = 0.01 * sum(
        (torch.eye(32) - f["ffn"].value.weight).pow(2).sum()
        for f in model._adapterhub.fusions["a,b,c"].layers.values()
    )
    torch.testing.assert_close(reg, expected)
    assert reg.item() > 1e-3
    model.eval()
    eval_loss = model(**inputs, labels=labels).loss
    torch.testing.assert_close(train_loss, eval_loss + reg, atol=1e-6, rtol=0)
    # the gradient of the loss reaches V through the regulariser
    train_loss.backward()
    assert model._adapterhub.fusions["a,b,c"].layers["0"]["ffn"].value.weight.grad is not None


def test_static_fusion_adds_no_regulariser(inputs):
    model = no_dropout_model(heads=("t",))
    model.add_adapter_fusion(FUSE, config=FusionConfig(value=False, regularization=False, dropout=0.0))
    model.train_adapter_fusion(FUSE, head="t")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    labels = torch.tensor([0, 1, 2])
    train_loss = model(**inputs, labels=labels).loss
    model.eval()
    assert model.fusion_regularization_loss() is None
    torch.testing.assert_close(train_loss, model(**inputs, labels=labels).loss)


@pytest.mark.parametrize("head", ["flexible", "static"])
@pytest.mark.parametrize("unfreeze", [False, True])
def test_only_fusion_and_head_change_under_train_adapter_fusion(head, unfreeze, inputs):
    kind = "classification" if head == "static" else "base"
    model = make_model(kind, heads=("t",) if head == "flexible" else (), num_labels=3)
    model.add_adapter("other")
    model.add_adapter_fusion(FUSE)
    model.train_adapter_fusion(FUSE, head="t" if head == "flexible" else None, unfreeze_adapters=unfreeze)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 1, 2])
    for _ in range(3):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    in_fusion = {k for k in changed if k.startswith("_adapterhub.fusions.a,b,c.")}
    in_head = {
        k
        for k in changed
        if k.startswith("_adapterhub.heads.t.") or (head == "static" and k.startswith("classifier."))
    }
    in_adapters = {k for k in changed if k.startswith("_adapterhub.adapters.")}
    assert in_fusion and in_head
    assert bool(in_adapters) == unfreeze
    assert not any(k.startswith("_adapterhub.adapters.other.") for k in changed)
    assert changed == in_fusion | in_head | in_adapters, changed - in_fusion - in_head - in_adapters
    assert model.active_adapters == FUSE


def test_train_adapter_fusion_needs_a_fuse():
    model = make_model()
    with pytest.raises(ConfigError, match="Fuse"):
        model.train_adapter_fusion(Stack("a", "b"))
    with pytest.raises(AdapterNotFoundError, match="add_adapter_fusion"):
        model.train_adapter_fusion(FUSE)


# ------------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip_gives_identical_outputs(tmp_path, inputs):
    model = make_model(heads=("t",))
    model.add_adapter_fusion(FUSE)
    perturb(model._adapterhub.fusions["a,b,c"], std=0.3, seed=4)
    model.set_active_adapters(Stack("a", FUSE))
    model.active_head = "t"
    with torch.no_grad():
        expected = model(**inputs).logits
    path = model.save_adapter_fusion(tmp_path / "fusion", FUSE, with_head="t")
    meta = json.loads((path / "fusion_config.json").read_text())
    assert meta["format"] == "adapterhub.fusion" and meta["adapters"] == ["a", "b", "c"]
    assert sorted(p.name for p in (path / "adapters").iterdir()) == ["a", "b", "c"]
    fresh = adapterhub.init(build("bert"))
    fuse = fresh.load_adapter_fusion(path, set_active=True)
    assert fuse == FUSE and fresh.active_head == "t" and set(fresh.adapters) == {"a", "b", "c"}
    fresh.set_active_adapters(Stack("a", FUSE))
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, expected)
    assert fresh.fusions == model.fusions


def test_load_fusion_without_its_adapters_fails_cleanly(tmp_path):
    model = make_model()
    model.add_adapter_fusion(FUSE)
    model.save_adapter_fusion(tmp_path / "f", "a,b,c", with_adapters=False, with_head=False)
    fresh = adapterhub.init(build("bert"))
    with pytest.raises(AdapterNotFoundError, match="load_adapter"):
        fresh.load_adapter_fusion(tmp_path / "f")
    assert not fresh.adapters and not fresh.fusions
    with pytest.raises(AdapterFileError, match="not a fusion directory"):
        fresh.load_adapter_fusion(tmp_path)


def test_corrupted_fusion_weights_leave_the_model_unchanged(tmp_path):
    model = make_model()
    model.add_adapter_fusion(FUSE)
    path = model.save_adapter_fusion(tmp_path / "f", FUSE, with_head=False)
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "fusion.safetensors")
    tensors.pop("layers.1.ffn.key.bias")
    save_file(tensors, path / "fusion.safetensors")
    fresh = adapterhub.init(build("bert"))
    with pytest.raises(AdapterFileError, match="missing"):
        fresh.load_adapter_fusion(path)
    assert not fresh.adapters and not fresh.fusions


def load_fixture():
    expected = json.loads((FIXTURE / "expected.json").read_text())
    model = adapterhub.init(transformers.AutoModel.from_pretrained(FIXTURE / "base").eval())
    for directory in expected["setup"]["adapter_dirs"]:
        model.load_adapter(FIXTURE / directory)
    inputs = {k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask")}
    return model, inputs, expected


def test_fusion_saved_by_the_adapters_library_gives_its_logits_and_attentions():
    model, inputs, expected = load_fixture()
    fuse = model.load_adapter_fusion(FIXTURE / "fusion", set_active=True)
    assert fuse == Fuse("a", "b", "c") and model.active_head == "abc"
    assert model.fusions["a,b,c"].regularization and model.fusions["a,b,c"].value
    with torch.no_grad(), record_fusion_attentions() as records:
        logits = model(**inputs).logits
    assert torch.allclose(logits, torch.tensor(expected["logits"]), atol=1e-4)
    assert len(records) == 2
    for name, layer, site, probs in records:
        theirs = torch.tensor(expected["fusion_attentions"]["a,b,c"][str(layer)]["output_adapter"])
        assert name == "a,b,c" and site == "ffn"
        assert torch.allclose(probs, theirs, atol=1e-4)
    for name in "abc":
        with torch.no_grad(), model.adapter_setup(name):
            model.active_head = "abc"
            single = model(**inputs).logits
        assert torch.allclose(single, torch.tensor(expected["logits_single_adapter"][name]), atol=1e-4)


def test_adapters_library_fusion_round_trips_through_our_format(tmp_path):
    model, inputs, expected = load_fixture()
    model.load_adapter_fusion(FIXTURE / "fusion", set_active=True)
    model.save_adapter_fusion(tmp_path / "ours", "a,b,c")
    fresh = adapterhub.init(transformers.AutoModel.from_pretrained(FIXTURE / "base").eval())
    fresh.load_adapter_fusion(tmp_path / "ours", set_active=True)
    with torch.no_grad():
        assert torch.allclose(fresh(**inputs).logits, torch.tensor(expected["logits"]), atol=1e-4)


def test_fusion_written_in_the_adapters_layout_has_their_files_and_reloads(tmp_path):
    model, inputs, expected = load_fixture()
    model.load_adapter_fusion(FIXTURE / "fusion", set_active=True)
    path = model.save_adapter_fusion(tmp_path / "theirs", "a,b,c", layout="adapters")
    meta = json.loads((path / "adapter_fusion_config.json").read_text())
    reference = json.loads((FIXTURE / "fusion" / "adapter_fusion_config.json").read_text())
    assert meta["config"] == reference["config"]
    assert {k: meta[k] for k in ("adapter_names", "name", "model_class", "model_type", "hidden_size")} == {
        k: reference[k] for k in ("adapter_names", "name", "model_class", "model_type", "hidden_size")
    }
    ours = torch.load(path / "pytorch_model_adapter_fusion.bin", weights_only=True)
    theirs = torch.load(FIXTURE / "fusion" / "pytorch_model_adapter_fusion.bin", weights_only=True)
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert (path / "model_adapter_fusion.safetensors").is_file() and (path / "head_config.json").is_file()
    assert (path / "adapters" / "a" / "adapter_config.json").is_file()  # each adapter in their layout too
    fresh = adapterhub.init(transformers.AutoModel.from_pretrained(FIXTURE / "base").eval())
    fresh.load_adapter_fusion(path, set_active=True)  # adapters come from adapters/<name>/
    assert set(fresh.adapters) == {"a", "b", "c"} and fresh.active_head == "abc"
    with torch.no_grad():
        assert torch.allclose(fresh(**inputs).logits, torch.tensor(expected["logits"]), atol=1e-4)


def test_unknown_fusion_layout_is_refused(tmp_path):
    model = make_model()
    model.add_adapter_fusion(FUSE)
    with pytest.raises(ConfigError, match="'adapterhub' or 'adapters'"):
        model.save_adapter_fusion(tmp_path / "f", FUSE, layout="peft")
    assert not (tmp_path / "f").exists()


# ------------------------------------------------------------------------------------------------ analysis


def test_fusion_activations_shape_rows_and_padding():
    model = make_model()
    model.add_adapter_fusion(FUSE)
    perturb(model._adapterhub.fusions["a,b,c"], std=0.5, seed=3)
    batches = [make_inputs(seed) for seed in (1, 2)]
    acts = model.fusion_activations(batches)
    assert acts.weights.shape == (2, 3) and acts.rows == ("0", "1") and acts.adapters == ("a", "b", "c")
    assert np.allclose(acts.weights.sum(1), 1.0) and acts.tokens == 2 * 19
    # by hand: mean over non-padding tokens of the recorded softmax weights
    sums = torch.zeros(2, 3, dtype=torch.float64)
    with torch.no_grad(), model.adapter_setup(FUSE):
        for batch in batches:
            with record_fusion_attentions() as records:
                model(**batch)
            for _, layer, _, probs in records:
                sums[layer] += (probs * batch["attention_mask"].unsqueeze(-1)).sum((0, 1)).double()
    assert np.allclose(acts.weights, (sums / sums.sum(1, keepdim=True)).numpy())
    assert model.active_adapters is None and not model.training
    back = FusionActivations.from_dict(json.loads(json.dumps(acts.to_dict())))
    assert np.allclose(back.weights, acts.weights) and back.rows == acts.rows
    assert "layer" in str(acts)


def test_fusion_activations_from_texts_and_a_houlsby_fusion(tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(90)]]))
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    model = adapterhub.init(build("bert"))
    for i, name in enumerate("xy"):
        model.add_adapter(name, config="houlsby")
        perturb(model._adapterhub.adapters[name], std=0.2, seed=i)
    model.add_adapter_fusion(Fuse("x", "y"))
    acts = model.fusion_activations(["w1 w2 w3", "w4 w5", "w6"], tokenizer, batch_size=2)
    assert acts.rows == ("0/attn", "0/ffn", "1/attn", "1/ffn") and acts.weights.shape == (4, 2)
    assert np.allclose(acts.weights.sum(1), 1.0)


def test_heatmap_png_is_written(tmp_path):
    acts = FusionActivations(
        "a,b,c",
        ("a", "b", "c"),
        tuple(str(i) for i in range(12)),
        np.random.default_rng(0).dirichlet([1, 1, 1], 12),
        99,
    )
    path = plot_fusion_heatmap(acts, tmp_path / "heat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    acts.save_json(tmp_path / "acts.json")
    from adapterhub.cli import main

    assert (
        main(["fusion-heatmap", str(tmp_path / "acts.json"), "-o", str(tmp_path / "cli.png"), "--title", "x"])
        == 0
    )
    assert (tmp_path / "cli.png").read_bytes()[:4] == b"\x89PNG"
