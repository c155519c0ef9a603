"""Round trips through our format and the `adapters` layout; sizes on disk; label maps."""

import json

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.io.adapter_dir import write_adapter_dir
from adapterhub.methods import BottleneckAdapter, ModelDims
from adapterhub.runtime.records import AdapterRecord, ModelInfo
from tiny_models import ARCHITECTURES, build, perturb


def fresh(arch, kind="classification"):
    return adapterhub.init(build(arch, kind, num_labels=3, seed=0))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(
    "head, layout", [("static", "adapterhub"), ("flexible", "adapterhub"), ("flexible", "adapters")]
)  # the `adapters` layout has no place for a model's built-in head
def test_round_trip_gives_identical_outputs(arch, head, layout, tmp_path, inputs):
    model = fresh(arch)
    model.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    model.add_adapter("sst-2", config="houlsby[reduction_factor=4]")
    if head == "flexible":
        model.add_classification_head("sst-2", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
    perturb(model._adapterhub.adapters["sst-2"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() == 2 and p.shape[0] == 3:
                p.add_(0.5)  # make the head differ from a fresh model's
    model.set_active_adapters("sst-2")
    expected = model(**inputs).logits
    if layout == "adapters" and not model._spec.adapters_lib_layers:  # no mapping to that library's names
        with pytest.raises(ConfigError, match="layout='adapterhub'"):
            model.save_adapter(tmp_path / "a", "sst-2", layout=layout)
        return
    model.save_adapter(tmp_path / "a", "sst-2", layout=layout)

    other = adapterhub.init(build(arch, "classification", num_labels=3, seed=0))
    name = other.load_adapter(tmp_path / "a", set_active=True)
    assert name == "sst-2"
    assert torch.allclose(other(**inputs).logits, expected, atol=1e-6)
    if head == "flexible":
        assert other.heads["sst-2"].id2label == {0: "neg", 1: "neu", 2: "pos"}
    else:
        assert other.config.id2label == {0: "neg", 1: "neu", 2: "pos"}


def test_files_are_json_and_safetensors(tmp_path):
    model = fresh("bert")
    model.add_adapter("x", config="pfeiffer")
    model.save_adapter(tmp_path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter.safetensors",
        "adapter_config.json",
        "head.safetensors",
        "head_config.json",
    ]
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (
        meta["format"] == "adapterhub.adapter" and meta["model_type"] == "bert" and meta["hidden_size"] == 32
    )
    assert meta["config"]["method"] == "bottleneck" and len(meta["config_hash"]) == 64
    model.save_adapter(tmp_path, "x", with_head=False)
    assert not (tmp_path / "head_config.json").exists()


@pytest.mark.parametrize("factor, limit_bytes", [(16, 4_000_000), (64, 1_000_000)])
def test_pfeiffer_adapter_for_bert_base_is_small_on_disk(factor, limit_bytes, tmp_path):
    config = adapterhub.resolve_config(f"pfeiffer[reduction_factor={factor}]")
    module = BottleneckAdapter("x", config, ModelDims("bert", 768, 12, pre_norm=False))
    record = AdapterRecord(
        "x", config.to_dict(), ModelInfo("bert", "bert-base-uncased", 768, 12), dict(module.state_dict())
    )
    write_adapter_dir(record, tmp_path)
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert size < limit_bytes
    assert size > 4 * sum(p.numel() for p in module.parameters())  # fp32 weights are really in it


def test_load_under_another_name_and_overwrite(tmp_path, inputs):
    model = fresh("bert")
    model.add_adapter("a")
    model.save_adapter(tmp_path, "a")
    assert model.load_adapter(tmp_path, load_as="b") == "b"
    with pytest.raises(adapterhub.AdapterExistsError, match="overwrite_ok"):
        model.load_adapter(tmp_path)
    assert model.load_adapter(tmp_path, overwrite_ok=True) == "a"
    assert set(model.adapters) == {"a", "b"}


def test_save_all_adapters(tmp_path):
    model = fresh("bert")
    model.add_adapter("a")
    model.add_adapter("b", config="houlsby")
    paths = model.save_all_adapters(tmp_path)
    assert sorted(p.name for p in paths) == ["a", "b"]


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("config", ["mam", "unipelt"])
def test_unions_with_a_prefix_part_are_inspected_without_a_model(arch, config, tmp_path):
    """The hub checks a file without the model: a union's prefix part takes its attention width from its own
    ``parts.<i>.control_trans`` weight, and a corrupted width is named."""
    from safetensors.torch import load_file, save_file

    from adapterhub.errors import AdapterFileError
    from adapterhub.io.manifest import inspect_adapter_dir

    model = adapterhub.init(build(arch))
    model.add_adapter("u", config=config)
    model.save_adapter(tmp_path / "u", "u")
    manifest = inspect_adapter_dir(tmp_path / "u")
    assert manifest.method == "union"
    assert manifest.num_parameters == model.adapter_summary()["u"].parameters
    weights = next((tmp_path / "u").glob("*.safetensors"))
    tensors = load_file(weights)
    key = "parts.0.control_trans.2.weight"
    tensors[key] = tensors[key][:-1]
    tensors[key.replace("weight", "bias")] = tensors[key.replace("weight", "bias")][:-1]
    save_file(tensors, weights)
    with pytest.raises(AdapterFileError, match="prefix width"):
        inspect_adapter_dir(tmp_path / "u")
