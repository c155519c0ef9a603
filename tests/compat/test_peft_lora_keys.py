"""Every key of the installed peft's LoraConfig is honoured (a round trip with identical outputs), metadata, or
refused by name when reading peft files."""

import dataclasses
import json

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.io.peft_keys import HONOURED, METADATA, REFUSED
from tiny_models import build, make_inputs

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

NEVER_REFUSED = {
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "r",
    "lora_alpha",
    "lora_dropout",
    "bias",
    "fan_in_fan_out",
    "use_rslora",
    "use_dora",
    "modules_to_save",
    "init_lora_weights",
}

# every honoured key set to a value other than its default, in one file
HONOURED_VALUES = {
    "r": 3,
    "lora_alpha": 5,
    "lora_dropout": 0.1,
    "target_modules": ["query", "value", "dense"],
    "exclude_modules": ["pooler.dense"],
    "layers_to_transform": [1],
    "layers_pattern": "layer",
    "rank_pattern": {"value": 2},
    "alpha_pattern": {"query": 7},
    "use_rslora": True,
    "modules_to_save": ["classifier"],
    "init_lora_weights": "gaussian",
    "bias": "lora_only",
    "trainable_token_indices": [3, 5, 7],
    "fan_in_fan_out": False,
}


def _keys():
    return [f.name for f in dataclasses.fields(peft.LoraConfig)]


def _logits(model):
    with torch.no_grad():
        return model(**make_inputs()).logits


def test_every_key_is_classified():
    for key in _keys():
        assert key in HONOURED or key in METADATA or key in REFUSED, key
    assert set(HONOURED) >= NEVER_REFUSED
    # loftq_config applies with init_lora_weights='loftq' only: tests/compat/test_peft_lora_inits.py; corda_config
    # with 'corda', lora_ga_config with 'lora_ga': tests/methods/test_lora_corda.py, test_lora_ga.py
    assert set(HONOURED) <= set(HONOURED_VALUES) | {
        "use_dora",
        "loftq_config",
        "corda_config",
        "lora_ga_config",
    }


@pytest.mark.parametrize("use_dora", [False, True])
def test_honoured_keys_round_trip(tmp_path, use_dora):
    config = peft.LoraConfig(**HONOURED_VALUES, use_dora=use_dora)
    theirs = peft.get_peft_model(build("bert", "classification"), config).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in theirs.parameters():
            if param.requires_grad:  # LoRA, the classifier's copy, the targets' biases, the token rows
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(build("bert", "classification")).eval()
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    read = ours.adapters["p"]
    assert read.method == ("dora" if use_dora else "lora")
    assert (read.r, read.alpha, read.dropout, read.use_rslora, read.init) == (3, 5.0, 0.1, True, "gaussian")
    assert dict(read.rank_pattern) == {"value": 2} and dict(read.alpha_pattern) == {"query": 7.0}
    assert read.modules_to_save == ("classifier",) and read.bias == "lora_only"
    assert read.trainable_token_indices == (3, 5, 7)
    assert sorted(ours._adapterhub.adapters["p"].module_paths().values()) == [
        "bert.encoder.layer.1.attention.output.dense",
        "bert.encoder.layer.1.attention.self.query",
        "bert.encoder.layer.1.attention.self.value",
        "bert.encoder.layer.1.intermediate.dense",
        "bert.encoder.layer.1.output.dense",
    ]
    torch.testing.assert_close(_logits(ours), _logits(theirs), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    back = peft.PeftModel.from_pretrained(build("bert", "classification"), tmp_path / "x").eval()
    torch.testing.assert_close(_logits(back), _logits(ours), atol=1e-5, rtol=0)


def _non_neutral(key):
    neutral = REFUSED[key][0]
    if False in neutral:
        return True
    return {"x": 1} if key.endswith("_config") else [1, 2]


@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("peft") / "a"
    theirs = peft.get_peft_model(build("bert"), peft.LoraConfig(r=2, target_modules=["query"]))
    theirs.save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    ("key", "value"),
    [(key, None) for key in sorted(REFUSED)]
    + [("bias", "boft_only"), ("init_lora_weights", "future_init"), ("a_newer_option", 3)],
)
def test_refused_keys_are_named(tmp_path, peft_dir, key, value):
    value = _non_neutral(key) if value is None else value
    meta = json.loads((peft_dir / "adapter_config.json").read_text())
    meta[key] = value
    directory = tmp_path / "a"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(meta))
    (directory / "adapter_model.safetensors").write_bytes(
        (peft_dir / "adapter_model.safetensors").read_bytes()
    )
    ours = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=f"sets {key}=") as info:
        ours.load_adapter(directory)
    assert "does not know" in str(info.value) or key != "init_lora_weights"
    assert not ours._adapterhub.adapters
