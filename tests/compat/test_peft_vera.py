"""peft's VeRA files: ``save_pretrained`` from a peft model (with and without the projections) loads into
adapterhub with peft's outputs, and adapterhub writes VeRA (by spec point or by module name) back in peft's layout,
which peft loads with our outputs. What adapterhub cannot hold is refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub
from adapterhub.errors import AdapterFileError, ConfigError
from tiny_models import build, make_inputs

peft = pytest.importorskip("peft", reason="peft is not installed")

TARGETS = {"bert": ["query", "value", "dense"], "llama": ["q_proj", "v_proj", "down_proj"]}


def _peft_model(arch: str, kind: str = "base", **options):
    config = peft.VeraConfig(r=4, target_modules=TARGETS[arch], projection_prng_key=9, **options)
    model = peft.get_peft_model(build(arch, kind), config).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".vera_lambda_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


def _out(model, inputs):
    with torch.no_grad():
        output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("save_projection", [True, False])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_peft_file_loads_with_peft_outputs_and_writes_back(arch, save_projection, tmp_path):
    theirs = _peft_model(arch, save_projection=save_projection)
    theirs.save_pretrained(tmp_path / "p")
    assert ("base_model.vera_A" in load_file(tmp_path / "p" / "adapter_model.safetensors")) is save_projection
    inputs = make_inputs()
    expected = _out(theirs, inputs)
    ours = adapterhub.init(build(arch))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    ours.eval()
    assert ours.adapters["p"].method == "vera"
    assert ours._adapterhub.adapters["p"].config.save_projection is save_projection
    torch.testing.assert_close(_out(ours, inputs), expected, atol=1e-6, rtol=0)
    ours.save_adapter(tmp_path / "back", "p", layout="peft")
    meta = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "VERA" and meta["save_projection"] is save_projection
    again = peft.PeftModel.from_pretrained(build(arch), tmp_path / "back").eval()
    torch.testing.assert_close(_out(again, inputs), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("save_projection", [True, False])
def test_ours_by_spec_point_written_as_peft_loads_identically(save_projection, tmp_path):
    ours = adapterhub.init(build("llama"))
    flag = str(save_projection).lower()
    config = f"vera[r=4,targets=[q,v,ffn_out],leave_out=[0],projection_prng_key=2,save_projection={flag}]"
    ours.add_adapter("a", config=config, set_active=True)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in ours._adapterhub.adapters["a"].parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    ours.eval()
    inputs = make_inputs()
    ours.save_adapter(tmp_path / "x", "a", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert (
        all(path.startswith("layers.1.") for path in meta["target_modules"])
        and len(meta["target_modules"]) == 3
    )
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "x").eval()
    torch.testing.assert_close(_out(theirs, inputs), _out(ours, inputs), atol=1e-6, rtol=0)
    back = adapterhub.init(build("llama"))
    back.load_adapter(tmp_path / "x", load_as="x", set_active=True)
    torch.testing.assert_close(_out(back.eval(), inputs), _out(ours, inputs), atol=1e-6, rtol=0)


def test_modules_to_save_travel_with_the_adapter(tmp_path):
    theirs = _peft_model("bert", "classification", modules_to_save=["classifier"])
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build("bert", "classification"))
    base = _out(ours, inputs)
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert ours.adapters["p"].modules_to_save == ("classifier",)
    torch.testing.assert_close(_out(ours.eval(), inputs), _out(theirs, inputs), atol=1e-6, rtol=0)
    ours.set_active_adapters(None)
    assert torch.equal(_out(ours, inputs), base)


def test_gpt2_conv1d_by_name_both_ways_and_fused_slices_refused(tmp_path):
    config = peft.VeraConfig(r=4, target_modules=["c_fc", "c_proj"], fan_in_fan_out=True)
    theirs = peft.get_peft_model(build("gpt2"), config).eval()
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if ".vera_lambda_" in name:
                param.normal_()
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build("gpt2"))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    torch.testing.assert_close(_out(ours.eval(), inputs), _out(theirs, inputs), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "back", "p", layout="peft")
    assert json.loads((tmp_path / "back" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    again = peft.PeftModel.from_pretrained(build("gpt2"), tmp_path / "back").eval()
    torch.testing.assert_close(_out(again, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)
    ours.add_adapter("q", config="vera[r=4,targets=[q,v]]")
    with pytest.raises(ConfigError, match=r"fused projection.*no peft form"):
        ours.save_adapter(tmp_path / "x", "q", layout="peft")


def test_refusals_name_the_option(tmp_path):
    theirs = _peft_model("bert")
    theirs.save_pretrained(tmp_path / "p")
    path = tmp_path / "p" / "adapter_config.json"
    meta = json.loads(path.read_text())

    def load():
        adapterhub.init(build("bert")).load_adapter(tmp_path / "p")

    path.write_text(json.dumps({**meta, "bias": "vera_only"}))
    with pytest.raises(ConfigError, match=r"bias='vera_only'"):
        load()
    path.write_text(json.dumps({**meta, "some_future_option": {"x": 1}}))
    with pytest.raises(ConfigError, match=r"some_future_option"):
        load()
    # save_projection=false while the file holds matrices the key does not give: peft would ignore them
    weights = load_file(tmp_path / "p" / "adapter_model.safetensors")
    path.write_text(json.dumps({**meta, "save_projection": False, "projection_prng_key": 1}))
    with pytest.raises(ConfigError, match=r"projection_prng_key=1 does not generate.*save_projection=true"):
        load()
    path.write_text(json.dumps({**meta, "save_projection": False}))  # the key's own matrices: fine
    load()
    # save_projection=true without the matrices: refused as peft refuses it
    save_file(
        {k: v for k, v in weights.items() if "vera_A" not in k}, tmp_path / "p" / "adapter_model.safetensors"
    )
    path.write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match=r"save_projection=true but its weights lack vera_A"):
        load()


def test_embedding_target_is_refused_like_peft():
    with pytest.raises((TypeError, ValueError)):
        peft.get_peft_model(build("bert"), peft.VeraConfig(r=2, target_modules=["word_embeddings"]))
    with pytest.raises(ConfigError, match=r"vera on nn.Embedding is not supported"):
        adapterhub.init(build("bert")).add_adapter(
            "e", config={"method": "vera", "r": 2, "target_modules": ["word_embeddings"]}
        )
