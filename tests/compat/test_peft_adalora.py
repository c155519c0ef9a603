"""peft's AdaLoRA files both ways: a peft AdaLoRA model trained a few steps with ``update_and_allocate`` (so its file
holds only the kept singular values and a ``rank_pattern``) loads into adapterhub with peft's outputs and writes back
in peft's layout, which peft loads with the same outputs; ours (by spec point, ranks allocated by our allocator)
written as peft loads identically in peft, and round-trips in our own layout. What adapterhub cannot hold is
refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import adapterhub
from adapterhub.errors import ConfigError
from tiny_models import build, make_inputs

peft = pytest.importorskip("peft", reason="peft is not installed")

TARGETS = {"bert": ["query", "value", "output.dense"], "llama": ["q_proj", "v_proj", "down_proj"]}


def _out(model, inputs):
    with torch.no_grad():
        output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def _trained_peft(arch: str):
    """A peft AdaLoRA model after 6 SGD steps with rank allocation (T=6, tfinal=2: final masks at step 4)."""
    config = peft.AdaLoraConfig(
        init_r=4, target_r=2, lora_alpha=6, target_modules=TARGETS[arch], total_step=6, tfinal=2
    )
    model = peft.get_peft_model(build(arch), config)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    inputs = make_inputs()
    model.eval()
    for step in range(1, 7):
        (_out_train(model, inputs) ** 2).mean().backward()
        with torch.no_grad():
            for p in params:
                p.sub_(0.5 * p.grad)
        model.base_model.update_and_allocate(step)
        for p in params:
            p.grad = None
    return model


def _out_train(model, inputs):
    output = model(**inputs)
    return output.last_hidden_state


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_peft_file_loads_with_peft_outputs_and_writes_back(arch, tmp_path):
    theirs = _trained_peft(arch)
    theirs.save_pretrained(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    saved = load_file(tmp_path / "p" / "adapter_model.safetensors")
    assert meta["peft_type"] == "ADALORA" and meta["rank_pattern"]
    assert any(t.shape[0] < 4 for k, t in saved.items() if k.endswith("lora_E"))  # resized by the pattern
    inputs = make_inputs()
    expected = _out(theirs, inputs)
    ours = adapterhub.init(build(arch))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    ours.eval()
    adapter = ours._adapterhub.adapters["p"]
    assert adapter.method == "adalora" and adapter.config.init_r == 4 and adapter.config.total_step == 6
    assert dict(adapter.config.rank_pattern) == {
        k.removesuffix(".lora_E"): tuple(v) for k, v in meta["rank_pattern"].items()
    }
    torch.testing.assert_close(_out(ours, inputs), expected, atol=1e-6, rtol=0)
    ours.save_adapter(tmp_path / "back", "p", layout="peft")
    back_meta = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert back_meta["rank_pattern"] == meta["rank_pattern"]
    back = load_file(tmp_path / "back" / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in saved.items()}
    again = peft.PeftModel.from_pretrained(build(arch), tmp_path / "back").eval()
    torch.testing.assert_close(_out(again, inputs), expected, atol=1e-6, rtol=0)


def test_ours_allocated_by_spec_point_written_as_peft_loads_identically(tmp_path):
    ours = adapterhub.init(build("llama"))
    ours.add_adapter(
        "a", config="adalora[init_r=4,target_r=1,targets=[q,v,ffn_out],tfinal=1]", set_active=True
    )
    adapter = ours._adapterhub.adapters["a"]
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in adapter.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    inputs = make_inputs()
    params = list(adapter.parameters())
    for step in range(1, 5):  # run length 4 (total_step from the "run"), final masks at step 3
        (ours(**inputs).last_hidden_state ** 2).mean().backward()
        with torch.no_grad():
            for p in params:
                p.sub_(0.5 * p.grad)
        adapter.after_optimizer_step(step, 4)
        for p in params:
            p.grad = None
    ours.eval()
    pattern = dict(adapter.config.rank_pattern)
    assert set(pattern) == {f"layers.{i}.{p}" for i in (0, 1) for p in ("q", "v", "ffn_out")}
    assert sum(sum(m) for m in pattern.values()) == 6
    expected = _out(ours, inputs)
    ours.save_adapter(tmp_path / "x", "a", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert meta["total_step"] == 4 and "layers.0.self_attn.q_proj.lora_E" in meta["rank_pattern"]
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "x").eval()
    torch.testing.assert_close(_out(theirs, inputs), expected, atol=1e-6, rtol=0)
    ours.save_adapter(tmp_path / "own", "a")  # our layout keeps all init_r rows and the pattern
    fresh = adapterhub.init(build("llama"))
    fresh.load_adapter(tmp_path / "own", set_active=True)
    fresh.eval()
    assert dict(fresh._adapterhub.adapters["a"].config.rank_pattern) == pattern
    torch.testing.assert_close(_out(fresh, inputs), expected, atol=0, rtol=0)


def test_new_adapter_written_as_peft_gets_a_schedule_peft_accepts(tmp_path):
    ours = adapterhub.init(build("bert"))
    ours.add_adapter("a", config="adalora[init_r=3,tinit=2,tfinal=1]", set_active=True)
    ours.save_adapter(tmp_path / "x", "a", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert meta["total_step"] == 4 and meta["rank_pattern"] is None
    theirs = peft.PeftModel.from_pretrained(build("bert"), tmp_path / "x").eval()
    torch.testing.assert_close(_out(theirs, make_inputs()), _out(ours, make_inputs()), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("key", "value"), [("bias", "all"), ("trainable_token_indices", [3]), ("lora_bias", True)]
)
def test_options_adapterhub_cannot_hold_are_refused(key, value, tmp_path):
    theirs = peft.get_peft_model(
        build("bert"), peft.AdaLoraConfig(init_r=2, target_modules=["query"], total_step=3)
    )
    theirs.save_pretrained(tmp_path / "p")
    path = tmp_path / "p" / "adapter_config.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, key: value}))
    ours = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=key):
        ours.load_adapter(tmp_path / "p")


def test_modules_to_save_and_gpt2_conv1d_both_ways(tmp_path):
    config = peft.AdaLoraConfig(
        init_r=3, target_modules=["query", "value"], total_step=5, modules_to_save=["classifier"]
    )
    theirs = peft.get_peft_model(build("bert", "classification"), config).eval()
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build("bert", "classification"))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert ours.adapters["p"].modules_to_save == ("classifier",)
    torch.testing.assert_close(_out(ours.eval(), inputs), _out(theirs, inputs), atol=1e-6, rtol=0)
    ours.save_adapter(tmp_path / "back", "p", layout="peft")
    again = peft.PeftModel.from_pretrained(build("bert", "classification"), tmp_path / "back").eval()
    torch.testing.assert_close(_out(again, inputs), _out(theirs, inputs), atol=1e-6, rtol=0)

    gpt2 = peft.get_peft_model(
        build("gpt2"),
        peft.AdaLoraConfig(init_r=2, target_modules=["c_fc"], total_step=5, fan_in_fan_out=True),
    ).eval()
    with torch.no_grad():
        for name, param in gpt2.named_parameters():
            if "lora_" in name:
                param.normal_()
    gpt2.save_pretrained(tmp_path / "g")
    mine = adapterhub.init(build("gpt2"))
    mine.load_adapter(tmp_path / "g", load_as="g", set_active=True)
    torch.testing.assert_close(_out(mine.eval(), inputs), _out(gpt2, inputs), atol=1e-5, rtol=0)
    mine.save_adapter(tmp_path / "gb", "g", layout="peft")
    assert json.loads((tmp_path / "gb" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    back = peft.PeftModel.from_pretrained(build("gpt2"), tmp_path / "gb").eval()
    torch.testing.assert_close(_out(back, inputs), _out(gpt2, inputs), atol=1e-5, rtol=0)
