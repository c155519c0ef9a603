"""The hub's torch-free ``header`` weights check (adapterhub.hub.server.header_inspect): it describes every method's
saved adapter as the full check does, and refuses broken files, weights for another model and other layouts."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import hubkit
import pytest

import adapterhub
from adapterhub.errors import AdapterFileError, IncompatibleModelError
from adapterhub.hub.server.header_inspect import inspect_from_headers, read_safetensors_header
from adapterhub.io.manifest import inspect_adapter_dir
from tiny_models import build

METHODS = (
    "pfeiffer",
    "houlsby[reduction_factor=4]",
    "lora[r=4,targets=[q,v,ffn_in]]",
    "lora[use_dora=true,r=4]",
    "ia3",
    "prefix_tuning[prefix_length=4]",
    "par_bn[reduction_factor=4]",
    "compacter[reduction_factor=4]",
)
FIELDS = (
    "layout",
    "name",
    "method",
    "config",
    "config_hash",
    "model_type",
    "model_name",
    "hidden_size",
    "num_layers",
    "has_head",
    "head_type",
    "id2label",
    "num_parameters",
    "files",
)


def _saved(tmp_path: Path, config: str, *, head: bool = False) -> Path:
    model = adapterhub.init(build("bert"))
    model.config.name_or_path = "tiny-bert"
    model.add_adapter("a", config=config)
    if head:
        model.add_classification_head("a", num_labels=3, id2label={0: "neg", 1: "mid", 2: "pos"})
    return model.save_adapter(tmp_path / "a", "a")


@pytest.mark.parametrize("config", METHODS)
def test_header_check_describes_every_method_as_the_full_check(tmp_path, config):
    directory = _saved(tmp_path, config)
    full, light = inspect_adapter_dir(directory), inspect_from_headers(directory)
    assert {f: getattr(light, f) for f in FIELDS} == {f: getattr(full, f) for f in FIELDS}


def test_header_check_reads_the_head(tmp_path):
    directory = _saved(tmp_path, "pfeiffer", head=True)
    full, light = inspect_adapter_dir(directory), inspect_from_headers(directory)
    assert light.has_head and light.head_type == full.head_type == "classification"
    assert light.id2label == full.id2label == {0: "neg", 1: "mid", 2: "pos"}
    assert light.num_parameters == full.num_parameters


def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def test_broken_safetensors_files_are_refused_naming_the_problem(tmp_path):
    directory = hubkit.make_adapter_dir(tmp_path / "a")
    weights = directory / "adapter.safetensors"
    good = weights.read_bytes()
    assert set(read_safetensors_header(weights)) == {
        f"layers.{i}.ffn.{p}.{w}" for i in range(2) for p in ("down", "up") for w in ("weight", "bias")
    }
    cases = {
        "truncated": (lambda: weights.write_bytes(good[:-4]), "truncated or has trailing bytes"),
        "padded": (lambda: weights.write_bytes(good + b"\0" * 4), "truncated or has trailing bytes"),
        "short": (lambda: weights.write_bytes(good[:5]), "shorter than its 8-byte header length"),
        "huge header": (
            lambda: weights.write_bytes(struct.pack("<Q", 1 << 40) + good[8:]),
            "larger than the file",
        ),
        "not json": (lambda: weights.write_bytes(struct.pack("<Q", 3) + b"abc"), "not JSON"),
    }
    for damage, message in cases.values():
        damage()
        with pytest.raises(AdapterFileError, match=message):
            inspect_from_headers(directory)
        weights.write_bytes(good)

    def wrong_shape(header):
        header["layers.0.ffn.up.bias"]["shape"] = [33]

    _rewrite_header(weights, wrong_shape)
    with pytest.raises(
        AdapterFileError, match=r"'layers.0.ffn.up.bias' \(F32, shape \(33,\)\) spans 128 bytes"
    ):
        inspect_from_headers(directory)
    weights.write_bytes(good)

    def unknown_dtype(header):
        header["layers.1.ffn.down.bias"]["dtype"] = "F128"

    _rewrite_header(weights, unknown_dtype)
    with pytest.raises(AdapterFileError, match="dtype 'F128'"):
        inspect_from_headers(directory)


def test_weights_for_another_model_are_a_model_mismatch(tmp_path):
    directory = hubkit.make_adapter_dir(tmp_path / "wide", weight_hidden_size=48)
    with pytest.raises(IncompatibleModelError, match="hidden size 48"):
        inspect_from_headers(directory)
    directory = hubkit.make_adapter_dir(tmp_path / "deep", num_layers=3)
    meta = json.loads((directory / "adapter_config.json").read_text())
    (directory / "adapter_config.json").write_text(json.dumps(meta | {"num_layers": 2}))
    with pytest.raises(IncompatibleModelError, match="layer 2, but the declared model has 2 layers"):
        inspect_from_headers(directory)


def test_edited_or_non_canonical_configs_are_refused(tmp_path):
    directory = hubkit.make_adapter_dir(tmp_path / "a")
    path = directory / "adapter_config.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(meta | {"config": meta["config"] | {"reduction_factor": 4}}))
    with pytest.raises(AdapterFileError, match="config_hash does not match"):
        inspect_from_headers(directory)
    partial = {"method": "bottleneck", "reduction_factor": 8}
    path.write_text(json.dumps(meta | {"config": partial, "config_hash": _config_hash(partial)}))
    with pytest.raises(AdapterFileError, match="not in canonical form"):
        inspect_from_headers(directory)


def _config_hash(config: dict) -> str:
    import hashlib

    return hashlib.sha256(hubkit.canonical(config).encode()).hexdigest()


def test_other_layouts_are_refused_with_what_to_do(tmp_path):
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="lora[r=4]")
    directory = model.save_adapter(tmp_path / "peft", "a", layout="peft")
    with pytest.raises(AdapterFileError, match=r"in peft's layout.*save it with model\.save_adapter"):
        inspect_from_headers(directory, model_type="bert")


def test_the_light_fixture_passes_both_checks_alike():
    """tests/fixtures/hub_light/light-sst, what scripts/hub/test_light_venv.sh publishes without torch."""
    directory = Path(__file__).resolve().parents[1] / "fixtures" / "hub_light" / "light-sst"
    full, light = inspect_adapter_dir(directory), inspect_from_headers(directory)
    assert {f: getattr(light, f) for f in FIELDS} == {f: getattr(full, f) for f in FIELDS}
    assert light.head_type == "classification" and light.num_layers == 2 and light.hidden_size == 32


def test_the_weights_check_setting(monkeypatch, tmp_path):
    import importlib.util

    from adapterhub.hub.errors import HubValidationError
    from adapterhub.hub.server.settings import HubSettings

    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path))
    monkeypatch.delenv("ADAPTERHUB_HUB_WEIGHTS_CHECK", raising=False)
    assert HubSettings().weights_check == "full"  # torch is installed here
    monkeypatch.setenv("ADAPTERHUB_HUB_WEIGHTS_CHECK", "header")
    assert HubSettings().weights_check == "header"
    with pytest.raises(HubValidationError, match="'shapes' is not one of full, header"):
        HubSettings(weights_check="shapes")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
    )
    monkeypatch.delenv("ADAPTERHUB_HUB_WEIGHTS_CHECK")
    assert HubSettings().weights_check == "header"
    with pytest.raises(HubValidationError, match="full weights check needs torch, which is not installed"):
        HubSettings(weights_check="full")
