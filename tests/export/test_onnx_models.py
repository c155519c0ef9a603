"""ONNX export of tiny models with adapters, setups and heads, checked with onnxruntime on other shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import adapterhub
from adapterhub.spec.composition import Average, Fuse, Stack, setup_to_json
from tiny_models import make_inputs, perturb

ARCHS = ["bert", "roberta", "distilbert", "gpt2", "llama"]


@pytest.mark.parametrize("arch", ARCHS)
def test_pfeiffer_adapter_and_head(arch, tmp_path, make_model, matches_torch, read_graph, run_onnx):
    model = make_model(arch)
    path = tmp_path / "model.onnx"
    result = adapterhub.export_onnx(model, path, make_inputs())

    inputs, outputs, metadata = read_graph(path)
    assert inputs == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert outputs == {"logits": ["batch", 3]}
    assert json.loads(metadata["adapterhub.setup"]) == "a" and metadata["adapterhub.head"] == "a"
    assert result.output_names == ("logits",) and max(result.max_abs_diff.values()) <= 1e-4
    matches_torch(model, path)

    # the adapter is in the graph: without it the head gives other logits
    batch = make_inputs(seed=5)
    exported = run_onnx(path, batch)["logits"]
    model.active_head = "a"
    model.set_active_adapters(None)
    with torch.no_grad():
        plain = model(**batch).logits.numpy()
    assert np.abs(exported - plain).max() > 1e-2


@pytest.mark.parametrize(("arch", "merge"), [("gpt2", False), ("llama", False), ("llama", True)])
def test_lora_merged_and_not(arch, merge, tmp_path, make_model, matches_torch):
    model = make_model(arch, config="lora[r=4,alpha=8]")
    if merge:
        model.merge_adapter("a")
        assert model.merged_adapters == ["a"]
    path = tmp_path / "model.onnx"
    adapterhub.export_onnx(model, path, make_inputs())
    matches_torch(model, path)


@pytest.mark.parametrize("setup", [Stack("lang", "task"), Average("lang", "task", weights=(0.3, 0.7))])
def test_stack_and_average(setup, tmp_path, make_model, matches_torch, read_graph):
    model = make_model("bert", names=("lang", "task"), head="task")
    model.set_active_adapters(setup)
    path = tmp_path / "model.onnx"
    adapterhub.export_onnx(model, path, make_inputs())
    assert read_graph(path)[2]["adapterhub.setup"] == setup_to_json(setup)
    matches_torch(model, path)


def test_fuse(tmp_path, make_model, matches_torch):
    model = make_model("roberta", names=("a", "b"), head="b")
    model.add_adapter_fusion(Fuse("a", "b"))
    perturb(model._adapterhub.fusions[Fuse("a", "b").fusion_name], std=0.3, seed=3)
    model.set_active_adapters(Fuse("a", "b"))
    path = tmp_path / "model.onnx"
    adapterhub.export_onnx(model, path, make_inputs())
    matches_torch(model, path)


def test_prefix_tuning_through_the_attention_function(tmp_path, make_model, matches_torch):
    model = make_model("llama", config="prefix_tuning")
    assert model.config._attn_implementation.startswith("adapterhub_")
    path = tmp_path / "model.onnx"
    adapterhub.export_onnx(model, path, make_inputs())
    matches_torch(model, path)


def test_setup_of_the_calling_context_is_exported(tmp_path, make_model, run_onnx):
    """A ``with model.adapter_setup(...)`` block around the export decides what the graph computes."""
    model = make_model("distilbert", names=("a", "b"), head=None)
    model.add_classification_head("cls", num_labels=3)
    model.active_head = "cls"
    path = tmp_path / "model.onnx"
    with model.adapter_setup("b"):
        result = adapterhub.export_onnx(model, path, make_inputs())
    assert json.loads(result.setup_json) == "b"
    batch = make_inputs(seed=9)
    exported = run_onnx(path, batch)["logits"]
    with torch.no_grad():
        with model.adapter_setup("b"):
            with_b = model(**batch).logits.numpy()
        with_a = model(**batch).logits.numpy()  # the active setup outside the block
    assert np.abs(exported - with_b).max() <= 1e-4
    assert np.abs(exported - with_a).max() > 1e-2


def test_base_model_outputs_and_token_type_ids(tmp_path, make_model, matches_torch, read_graph):
    """Without a flexible head the graph returns the base model's fields; the tokenizer's token_type_ids are an
    input when the example has them."""
    model = make_model("bert", head=None)
    example = {**make_inputs(), "token_type_ids": torch.zeros(3, 7, dtype=torch.long)}
    path = tmp_path / "model.onnx"
    adapterhub.export_onnx(model, path, example)
    inputs, outputs, _ = read_graph(path)
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert outputs == {"last_hidden_state": ["batch", "sequence", 32], "pooler_output": ["batch", 32]}
    batch = make_inputs(seed=4)
    batch["token_type_ids"] = torch.ones_like(batch["input_ids"])
    matches_torch(model, path, [batch])


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        "houlsby",
        "par_bn",
        "pfeiffer+inv",
        "compacter[reduction_factor=4]",
        "ia3",
        "dora",
        "prompt_tuning",
        "prefix_tuning",
        "mam",
        "unipelt",
    ],
)
def test_every_method_exports(config, tmp_path, make_model, matches_torch):
    model = make_model("bert", config=config)
    path = tmp_path / "model.onnx"
    adapterhub.export_onnx(model, path, make_inputs())
    matches_torch(model, path)
