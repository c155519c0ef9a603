"""peft's DoRA (LoRA with use_dora) and (IA)³ files both ways, against real peft (outputs within 1e-5)."""

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.spec.configs import resolve_config
from tiny_models import build, make_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

DORA = {
    # arch: (model kind, peft target_modules, our targets)
    "bert": ("classification", ["query", "value", "intermediate.dense"], ["q", "v", "ffn_in"]),
    "gpt2": ("base", ["c_attn", "mlp.c_proj"], ["q", "k", "v", "ffn_out"]),
    "llama": ("base", ["q_proj", "v_proj", "down_proj"], ["q", "v", "ffn_out"]),
}
IA3 = {
    # arch: (peft target_modules, feedforward_modules, our targets, our input_targets)
    # a regex: the suffix "output.dense" would also select attention.output.dense
    "bert": (
        r".*layer\.\d+\.(attention\.self\.key|attention\.self\.value|output\.dense)",
        r".*\.\d+\.output\.dense",
        ["k", "v"],
        ["ffn_out"],
    ),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"], ["q", "k", "v"], ["ffn_out"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"], ["k", "v"], ["ffn_out"]),
}


def _out(model, inputs):
    with torch.no_grad():
        result = model(**inputs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def _perturb(model, tags):
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(tag in name for tag in tags):
                noise = torch.randn(param.shape, generator=generator)
                if "magnitude" in name or "ia3_l" in name:
                    param.mul_(1 + 0.2 * noise)  # around the base norm / one
                else:
                    param.copy_(noise * 0.3)


def test_lora_preset_with_use_dora_is_dora():
    config = resolve_config("lora[use_dora=true,r=4,targets=[q,k]]")
    assert config.method == "dora" and config.r == 4 and config.targets == ("q", "k")
    assert resolve_config("lora[use_dora=false]") == resolve_config("lora")
    assert resolve_config({"method": "lora", "use_dora": True}).method == "dora"
    assert "use_dora" not in resolve_config("lora").to_dict()  # saved LoRA configs (and hashes) unchanged
    with pytest.raises(ConfigError, match="use_dora"):
        resolve_config("pfeiffer[use_dora=true]")


@pytest.mark.parametrize("arch", sorted(DORA))
def test_peft_dora_loads_and_writes_back(tmp_path, arch):
    kind, modules, targets = DORA[arch]
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=modules,
        use_dora=True,
        task_type="SEQ_CLS" if kind == "classification" else None,
    )
    theirs = peft.get_peft_model(build(arch, kind), config).eval()
    _perturb(theirs, ("lora_", "modules_to_save"))
    theirs.save_pretrained(tmp_path / "a")
    ours = adapterhub.init(build(arch, kind))
    name = ours.load_adapter(tmp_path / "a", set_active=True)
    module = ours._adapterhub.adapters[name]
    assert module.config.method == "dora" and sorted(module.config.targets) == sorted(targets)
    inputs = make_inputs()
    torch.testing.assert_close(_out(ours, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "b", name, layout="peft")
    back = peft.PeftModel.from_pretrained(build(arch, kind), tmp_path / "b").eval()
    torch.testing.assert_close(_out(back, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_our_dora_preset_saved_as_peft_loads_in_peft(tmp_path, arch):
    ours = adapterhub.init(build(arch))
    ours.add_adapter("d", config="lora[use_dora=true,r=3,alpha=6,targets=[q,v,ffn_out]]", set_active=True)
    perturb(ours._adapterhub.adapters["d"])
    ours.save_adapter(tmp_path / "d", "d", layout="peft")
    theirs = peft.PeftModel.from_pretrained(build(arch), tmp_path / "d").eval()
    inputs = make_inputs()
    torch.testing.assert_close(_out(theirs, inputs), _out(ours, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(IA3))
def test_peft_ia3_loads_and_writes_back(tmp_path, arch):
    modules, feedforward, targets, input_targets = IA3[arch]
    config = peft.IA3Config(target_modules=modules, feedforward_modules=feedforward)
    theirs = peft.get_peft_model(build(arch), config).eval()
    _perturb(theirs, ("ia3_l",))
    theirs.save_pretrained(tmp_path / "a")
    ours = adapterhub.init(build(arch))
    name = ours.load_adapter(tmp_path / "a", set_active=True)
    module = ours._adapterhub.adapters[name]
    assert module.config.method == "ia3"
    assert list(module.config.targets) == targets and list(module.config.input_targets) == input_targets
    inputs = make_inputs()
    torch.testing.assert_close(_out(ours, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "b", name, layout="peft")
    back = peft.PeftModel.from_pretrained(build(arch), tmp_path / "b").eval()
    torch.testing.assert_close(_out(back, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_our_ia3_saved_as_peft_loads_in_peft(tmp_path, arch):
    ours = adapterhub.init(build(arch))
    ours.add_adapter(
        "i", config="ia3[leave_out=[0]]", set_active=True
    )  # k, v outputs (GPT-2: q filled with ones)
    perturb(ours._adapterhub.adapters["i"], std=0.2)
    ours.save_adapter(tmp_path / "i", "i", layout="peft")
    theirs = peft.PeftModel.from_pretrained(build(arch), tmp_path / "i").eval()
    inputs = make_inputs()
    torch.testing.assert_close(_out(theirs, inputs), _out(ours, inputs), atol=1e-5, rtol=0)
    ours.add_adapter("both", config="ia3[targets=[k],input_targets=[k]]")
    with pytest.raises(ConfigError, match="one vector per module"):
        ours.save_adapter(tmp_path / "both", "both", layout="peft")
