"""peft's LN tuning files: ``save_pretrained`` from a peft model loads into adapterhub with peft's outputs, and
adapterhub writes LN tuning back in peft's layout, which peft loads with our outputs; what adapterhub does not hold
is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from tiny_models import build, make_inputs

peft = pytest.importorskip("peft", reason="peft is not installed")

TARGETS = {"bert": ["LayerNorm"], "llama": ["input_layernorm", "post_attention_layernorm", "norm"]}


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_peft_file_loads_with_peft_outputs_and_writes_back(arch, tmp_path):
    theirs = peft.get_peft_model(build(arch), peft.LNTuningConfig(target_modules=TARGETS[arch])).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if ".ln_tuning_layers." in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    expected = _out(theirs, inputs)
    ours = adapterhub.init(build(arch))
    assert not torch.equal(_out(ours, inputs), expected)
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    ours.eval()
    assert ours.adapters["p"].method == "ln_tuning"
    assert torch.equal(_out(ours, inputs), expected)
    ours.save_adapter(tmp_path / "back", "p", layout="peft")
    meta = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LN_TUNING"
    again = peft.PeftModel.from_pretrained(build(arch), tmp_path / "back").eval()
    assert torch.equal(_out(again, inputs), expected)


def test_ours_written_as_peft_loads_identically(tmp_path):
    ours = adapterhub.init(build("llama"))
    ours.add_adapter("a", "ln_tuning", set_active=True)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in ours._adapterhub.adapters["a"].parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    ours.eval()
    inputs = make_inputs()
    ours.save_adapter(tmp_path / "a", "a", layout="peft")
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "a").eval()
    assert torch.equal(_out(theirs, inputs), _out(ours, inputs))


def test_modules_to_save_is_refused_by_name(tmp_path):
    theirs = peft.get_peft_model(
        build("bert"), peft.LNTuningConfig(target_modules=["LayerNorm"], modules_to_save=["pooler"])
    )
    theirs.save_pretrained(tmp_path / "p")
    with pytest.raises(ConfigError, match="modules_to_save"):
        adapterhub.init(build("bert")).load_adapter(tmp_path / "p")
