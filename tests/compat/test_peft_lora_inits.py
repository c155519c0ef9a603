"""Saving and loading LoRA adapters whose init replaced the base (PiSSA, OLoRA, LoftQ), in our layout and peft's:
peft's unconverted files (init redone on the base when loaded), the conversion to a plain LoRA on the ORIGINAL
base (peft's ``path_initial_model_for_weight_conversion``), and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from tiny_models import build, make_inputs

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)
from safetensors.torch import load_file  # noqa: E402

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _out(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**make_inputs()).last_hidden_state


def _trained(init: str, **options):
    """A llama with adapter 'x' (``init``) whose A and B moved away from their start (as after training)."""
    model = adapterhub.init(build("llama"))
    torch.manual_seed(3)
    config = {"method": "lora", "r": 4, "alpha": 8, "target_modules": TARGETS, "init": init, **options}
    model.add_adapter("x", config=config, set_active=True)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in model._adapterhub.adapters["x"].parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_our_layout_round_trip_on_the_original_base(init, tmp_path):
    model = _trained(init)
    expected = _out(model)
    assert not torch.allclose(expected, _out(build("llama")), atol=1e-4)
    model.save_adapter(tmp_path / "a", "x")
    fresh = adapterhub.init(build("llama"))  # the ORIGINAL base: loading makes it the residual again
    fresh.load_adapter(tmp_path / "a", set_active=True)
    torch.testing.assert_close(_out(fresh), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        fresh.layers[0].self_attn.q_proj.weight, model.layers[0].self_attn.q_proj.weight, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_peft_unconverted_files_both_ways(init, tmp_path):
    model = _trained(init)
    expected = _out(model)
    model.save_adapter(tmp_path / "p", "x", layout="peft")
    meta = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert meta["init_lora_weights"] == init and meta["r"] == 4
    assert not any("initial" in key for key in load_file(tmp_path / "p" / "adapter_model.safetensors"))
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "p").eval()  # peft redoes the init
    torch.testing.assert_close(_out(theirs), expected, atol=1e-5, rtol=0)
    back = adapterhub.init(build("llama"))
    back.load_adapter(tmp_path / "p", set_active=True)
    torch.testing.assert_close(_out(back), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("init", "rslora"), [("pissa", False), ("olora", True)])
def test_converted_file_equals_peft_conversion_on_the_original_base(init, rslora, tmp_path):
    # peft: save the initial adapter, train, save converted against it
    torch.manual_seed(3)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=init, use_rslora=rslora
    )
    theirs = peft.get_peft_model(build("llama"), config).eval()
    theirs.save_pretrained(tmp_path / "init")
    model = adapterhub.init(build("llama"))
    torch.manual_seed(3)
    model.add_adapter(
        "x",
        config={
            "method": "lora",
            "r": 4,
            "alpha": 8,
            "target_modules": TARGETS,
            "init": init,
            "use_rslora": rslora,
        },
        set_active=True,
    )
    generator = torch.Generator().manual_seed(11)
    adapter = model._adapterhub.adapters["x"]
    ours = {path: adapter.layer_at(layer, point) for (layer, point), path in adapter.module_paths().items()}
    with torch.no_grad():
        for name, module in theirs.base_model.model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                for param, mine in (
                    (module.lora_A["default"].weight, ours[name].lora_A),
                    (module.lora_B["default"].weight, ours[name].lora_B),
                ):
                    param.add_(torch.randn(param.shape, generator=generator) * 0.05)
                    mine.copy_(param)
    expected = _out(model.eval())
    torch.testing.assert_close(_out(theirs), expected, atol=1e-5, rtol=0)
    theirs.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    model.save_adapter(tmp_path / "ours", "x", layout="peft", convert_to_lora=True)

    want = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    got = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "init_lora_weights", "use_rslora"):
        assert (
            got[key] == pytest.approx(want[key]) if isinstance(want[key], float) else got[key] == want[key]
        ), key
    want_t = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    got_t = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert set(got_t) == set(want_t)
    for key in want_t:
        torch.testing.assert_close(got_t[key], want_t[key], atol=1e-6, rtol=0)
    # the converted file on the ORIGINAL base computes what the trained PiSSA / OLoRA adapter did
    on_original = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "ours").eval()
    torch.testing.assert_close(_out(on_original), expected, atol=1e-5, rtol=0)
    mine = adapterhub.init(build("llama"))
    mine.load_adapter(tmp_path / "ours", set_active=True)
    torch.testing.assert_close(_out(mine), expected, atol=1e-5, rtol=0)
    # in our layout too
    model.save_adapter(tmp_path / "ah", "x", convert_to_lora=True)
    again = adapterhub.init(build("llama"))
    again.load_adapter(tmp_path / "ah", set_active=True)
    torch.testing.assert_close(_out(again), expected, atol=1e-5, rtol=0)


def test_loftq_peft_file_round_trip(tmp_path):
    model = _trained("loftq", loftq_bits=8, loftq_iter=2)
    expected = _out(model)
    model.save_adapter(tmp_path / "q", "x", layout="peft")
    meta = json.loads((tmp_path / "q" / "adapter_config.json").read_text())
    assert meta["init_lora_weights"] == "loftq"
    assert meta["loftq_config"] == {"loftq_bits": 8, "loftq_iter": 2}
    back = adapterhub.init(build("llama"))  # the init (deterministic) is redone on the float base
    back.load_adapter(tmp_path / "q", set_active=True)
    torch.testing.assert_close(_out(back), expected, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="LoftQ's base is dequant"):
        model.save_adapter(tmp_path / "c", "x", convert_to_lora=True)


def test_refusals_on_save_and_load(tmp_path):
    model = _trained("pissa")
    with pytest.raises(ConfigError, match="adapters library's layout cannot say"):
        model.save_adapter(tmp_path / "a", "x", layout="adapters")
    plain = adapterhub.init(build("llama"))
    plain.add_adapter("y", config="lora[r=4]")
    with pytest.raises(ConfigError, match="plain LoRA already"):
        plain.save_adapter(tmp_path / "b", "y", convert_to_lora=True)
    model.save_adapter(tmp_path / "p", "x")
    with pytest.raises(ConfigError, match=r"other adapters \(y\)"):
        plain.load_adapter(tmp_path / "p")
    # a peft file whose init adapterhub does not know
    theirs = peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    theirs.save_pretrained(tmp_path / "c")
    meta_path = tmp_path / "c" / "adapter_config.json"
    meta = json.loads(meta_path.read_text())
    meta["init_lora_weights"] = "future_init"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="init_lora_weights='future_init'"):
        adapterhub.init(build("llama")).load_adapter(tmp_path / "c")
    meta["init_lora_weights"] = "eva"  # EVA leaves the base as it is: a trained EVA adapter is a plain LoRA
    meta_path.write_text(json.dumps(meta))
    loaded = adapterhub.init(build("llama"))
    loaded.load_adapter(tmp_path / "c", set_active=True)
    assert loaded._adapterhub.adapters[next(iter(loaded._adapterhub.adapters))].config.init == "lora"
