"""peft's OFT and BOFT files: ``save_pretrained`` from a peft model loads into adapterhub with peft's outputs, and
adapterhub writes OFT / BOFT (by module name or by spec point) back in peft's layout with the same keys, which peft
loads with our outputs. What adapterhub cannot hold is refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub
from adapterhub.errors import ConfigError
from tiny_models import build, make_inputs

peft = pytest.importorskip("peft", reason="peft is not installed")
pytestmark = pytest.mark.filterwarnings("ignore")  # peft's BOFT warns that its CUDA extension is missing

TARGETS = {
    "bert": ["query", "value", "intermediate.dense"],
    "llama": ["q_proj", "v_proj", "up_proj", "o_proj"],
}
CASES = {
    "oft": lambda targets, **kw: peft.OFTConfig(oft_block_size=8, target_modules=targets, **kw),
    "oft-exact-share": lambda targets, **kw: peft.OFTConfig(
        oft_block_size=16, use_cayley_neumann=False, block_share=True, target_modules=targets, **kw
    ),
    "oft-r-coft": lambda targets, **kw: peft.OFTConfig(
        r=4, oft_block_size=0, coft=True, eps=0.05, target_modules=targets, **kw
    ),
    "boft": lambda targets, **kw: peft.BOFTConfig(boft_block_size=4, target_modules=targets, **kw),
}


def _peft_model(arch: str, which: str, kind: str = "base", **options):
    model = peft.get_peft_model(build(arch, kind), CASES[which](TARGETS[arch], **options)).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "oft_R" in name or "boft_R" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            elif "boft_s" in name:
                param.copy_(1 + torch.randn(param.shape, generator=generator) * 0.1)
    return model


def _out(model, inputs):
    with torch.no_grad():
        output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("which", list(CASES))
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_peft_file_loads_with_peft_outputs_and_writes_back_with_its_keys(arch, which, tmp_path):
    theirs = _peft_model(arch, which)
    inputs = make_inputs()
    expected = _out(theirs, inputs)  # coft projects peft's parameters on this first call, before saving
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(build(arch))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    ours.eval()
    assert ours.adapters["p"].method == which.split("-")[0]
    torch.testing.assert_close(_out(ours, inputs), expected, atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "back", "p", layout="peft")
    written = load_file(tmp_path / "back" / "adapter_model.safetensors")
    original = load_file(tmp_path / "p" / "adapter_model.safetensors")
    assert set(written) == set(original)
    for key, tensor in original.items():
        torch.testing.assert_close(written[key], tensor, atol=1e-7, rtol=0)
    meta = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert meta["peft_type"] == which.split("-")[0].upper()
    again = peft.PeftModel.from_pretrained(build(arch), tmp_path / "back").eval()
    torch.testing.assert_close(_out(again, inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_ours_by_spec_point_written_as_peft_loads_identically(method, tmp_path):
    ours = adapterhub.init(build("llama"))
    config = (
        "oft[oft_block_size=8,targets=[q,v,ffn_in],leave_out=[0]]"
        if method == "oft"
        else "boft[boft_block_size=4,targets=[q,v,ffn_in],leave_out=[0]]"
    )
    ours.add_adapter("a", config=config, set_active=True)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in ours._adapterhub.adapters["a"].parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    ours.eval()
    inputs = make_inputs()
    ours.save_adapter(tmp_path / "x", "a", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert sorted(meta["target_modules"]) == [
        "layers.1.mlp.up_proj",
        "layers.1.self_attn.q_proj",
        "layers.1.self_attn.v_proj",
    ]
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "x").eval()
    torch.testing.assert_close(_out(theirs, inputs), _out(ours, inputs), atol=1e-5, rtol=0)
    back = adapterhub.init(build("llama"))
    back.load_adapter(tmp_path / "x", load_as="a", set_active=True)
    back.eval()
    torch.testing.assert_close(_out(back, inputs), _out(ours, inputs), atol=1e-6, rtol=0)


def test_classifier_with_modules_to_save_round_trips(tmp_path):
    theirs = _peft_model("bert", "oft", kind="classification", task_type="SEQ_CLS")
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build("bert", "classification"))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    ours.eval()
    torch.testing.assert_close(_out(ours, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)


def test_boft_factor_count_comes_from_the_weights(tmp_path):
    """peft without its CUDA extension trains one butterfly factor whatever boft_n_butterfly_factor says."""
    theirs = _peft_model("llama", "boft", boft_n_butterfly_factor=2)
    theirs.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "adapter_config.json").read_text())["boft_n_butterfly_factor"] == 2
    ours = adapterhub.init(build("llama"))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert ours._adapterhub.adapters["p"].config.boft_n_butterfly_factor == 1
    ours.eval()
    inputs = make_inputs()
    torch.testing.assert_close(_out(ours, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)


def _edit(directory, **changes):
    path = directory / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is ...]:
        del meta[key]
    path.write_text(json.dumps(meta))


def test_refused_options_are_named(tmp_path):
    theirs = _peft_model("llama", "oft")
    theirs.save_pretrained(tmp_path / "p")
    model = adapterhub.init(build("llama"))
    _edit(tmp_path / "p", bias="all")
    with pytest.raises(ConfigError, match=r"bias='all'"):
        model.load_adapter(tmp_path / "p")
    _edit(tmp_path / "p", bias="none", oft_future_option=3)
    with pytest.raises(ConfigError, match=r"oft_future_option=3"):
        model.load_adapter(tmp_path / "p")
    _edit(tmp_path / "p", oft_future_option=..., oft_block_size=...)
    with pytest.raises(ConfigError, match=r"peft < 0.14"):
        model.load_adapter(tmp_path / "p")
    _edit(tmp_path / "p", oft_block_size=8, peft_version="0.17.0")
    with pytest.warns(UserWarning, match=r"before peft 0.18"):
        model.load_adapter(tmp_path / "p", load_as="old")


def test_gpt2_conv1d_and_fused_slices_have_no_peft_form(tmp_path):
    model = adapterhub.init(build("gpt2"))
    model.add_adapter("a", config="oft[oft_block_size=8,targets=[q]]")
    with pytest.raises(ConfigError, match=r"slice of a fused projection"):
        model.save_adapter(tmp_path / "a", "a", layout="peft")
    model.add_adapter("b", config="oft[oft_block_size=8,targets=[ffn_in]]")
    with pytest.raises(ConfigError, match=r"Conv1D.*nn.Linear only"):
        model.save_adapter(tmp_path / "b", "b", layout="peft")


def test_a_minimal_hand_written_file_loads(tmp_path):
    (tmp_path / "p").mkdir()
    save_file(
        {"base_model.model.layers.0.self_attn.q_proj.oft_R.weight": torch.zeros(4, 28)},
        tmp_path / "p" / "adapter_model.safetensors",
    )
    meta = {
        "peft_type": "OFT",
        "oft_block_size": 8,
        "r": 0,
        "target_modules": ["q_proj"],
        "peft_version": "0.21.2",
    }
    (tmp_path / "p" / "adapter_config.json").write_text(json.dumps(meta))
    model = adapterhub.init(build("llama"))
    model.load_adapter(tmp_path / "p", load_as="p", set_active=True)  # a zero rotation: the identity
    inputs = make_inputs()
    torch.testing.assert_close(_out(model, inputs), _out(build("llama"), inputs), atol=1e-6, rtol=0)
