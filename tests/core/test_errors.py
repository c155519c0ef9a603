"""Every bad input raises a clear error and leaves the model as it was."""

import json

import pytest
import torch

import adapterhub
from adapterhub import (
    AdapterExistsError,
    AdapterFileError,
    AdapterNotFoundError,
    ConfigError,
    IncompatibleModelError,
)
from tiny_models import build


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, dict(model.adapters), model.active_adapters


def assert_unchanged(model, before):
    tensors, adapters, active = before
    after = model.state_dict()
    assert set(after) == set(tensors) and all(torch.equal(after[k], tensors[k]) for k in tensors)
    assert dict(model.adapters) == adapters and model.active_adapters == active


@pytest.fixture
def model():
    m = adapterhub.init(build("bert", "classification", num_labels=2))
    m.add_adapter("ok", set_active=True)
    return m


@pytest.fixture
def saved(model, tmp_path):
    model.save_adapter(tmp_path / "ok", "ok")
    return tmp_path / "ok"


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: m.add_adapter("x", config="pfeifer"), ConfigError, "did you mean 'pfeiffer'"),
        (lambda m: m.add_adapter("x", config={"reduction": 2}), ConfigError, "Valid keys"),
        (lambda m: m.add_adapter("x", config="pfeiffer[reduction_factor=64]"), ConfigError, "zero-width"),
        (lambda m: m.add_adapter("x", config="pfeiffer[leave_out=[5]]"), ConfigError, "has 2 layers"),
        (lambda m: m.add_adapter("ok"), AdapterExistsError, "overwrite_ok"),
        (lambda m: m.add_adapter("bad.name"), ConfigError, "Invalid adapter name"),
        (lambda m: m.set_active_adapters("nope"), AdapterNotFoundError, "add_adapter"),
        (lambda m: m.set_active_adapters(["ok", "nope"]), AdapterNotFoundError, "nope"),
        (lambda m: m.delete_adapter("nope"), AdapterNotFoundError, "nope"),
        (lambda m: m.save_adapter("/tmp/never", "nope"), AdapterNotFoundError, "nope"),
        (lambda m: m.set_active_adapters(3), ConfigError, "setup"),
        (lambda m: m.save_adapter("/tmp/never", "ok", layout="zip"), ConfigError, "layout"),
    ],
)
def test_api_misuse(model, call, error, message):
    before = state(model)
    with pytest.raises(error, match=message):
        call(model)
    assert_unchanged(model, before)


def load_into_fresh(path, **kwargs):
    target = adapterhub.init(build("bert", "classification", num_labels=2))
    target.add_adapter("keep")
    before = state(target)
    return target, before


def test_directory_that_is_not_an_adapter(tmp_path):
    target, before = load_into_fresh(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(AdapterFileError, match="not an adapter directory"):
        target.load_adapter(tmp_path)
    with pytest.raises(AdapterFileError, match="No adapter directory"):
        target.load_adapter(str(tmp_path / "missing" / "dir"))
    assert_unchanged(target, before)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_corrupted_weights(saved, damage):
    weights = saved / "adapter.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64)
    else:
        weights.unlink()
    target, before = load_into_fresh(saved)
    with pytest.raises(AdapterFileError, match=r"adapter\.safetensors"):
        target.load_adapter(saved)
    assert_unchanged(target, before)


def test_corrupted_config(saved):
    (saved / "adapter_config.json").write_text("{not json")
    target, before = load_into_fresh(saved)
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        target.load_adapter(saved)
    assert_unchanged(target, before)


def test_edited_config_is_detected_by_its_hash(saved):
    meta = json.loads((saved / "adapter_config.json").read_text())
    meta["config"]["reduction_factor"] = 2
    (saved / "adapter_config.json").write_text(json.dumps(meta))
    target, before = load_into_fresh(saved)
    with pytest.raises(AdapterFileError, match="config_hash"):
        target.load_adapter(saved)
    assert_unchanged(target, before)


def test_weights_that_do_not_fit_the_config(saved):
    meta = json.loads((saved / "adapter_config.json").read_text())
    from adapterhub.spec.configs import canonical_json, sha256_hex

    meta["config"]["reduction_factor"] = 2
    meta["config_hash"] = sha256_hex(canonical_json(meta["config"]))
    (saved / "adapter_config.json").write_text(json.dumps(meta))
    target, before = load_into_fresh(saved)
    with pytest.raises(AdapterFileError, match="wrong shapes"):
        target.load_adapter(saved)
    assert_unchanged(target, before)


@pytest.mark.parametrize(
    "arch, overrides, message",
    [
        ("roberta", {}, "model type 'bert'"),
        ("bert", {"hidden_size": 64}, "hidden size 32"),
        ("bert", {"num_hidden_layers": 3}, "2 layers"),
    ],
)
def test_adapter_for_another_model(saved, arch, overrides, message):
    target = adapterhub.init(build(arch, "classification", num_labels=2, **overrides))
    before = state(target)
    with pytest.raises(IncompatibleModelError, match=message):
        target.load_adapter(saved)
    assert_unchanged(target, before)


def test_static_head_for_another_number_of_labels(saved):
    target = adapterhub.init(build("bert", "classification", num_labels=5))
    before = state(target)
    with pytest.raises(IncompatibleModelError, match="num_labels"):
        target.load_adapter(saved)
    assert_unchanged(target, before)
    target.load_adapter(saved, with_head=False)  # the adapter alone still fits
    assert "ok" in target.adapters
