"""peft's LoRA files both ways: peft -> our load_adapter, and our save_adapter(layout="peft") -> PeftModel.

Real peft (a ``dev`` extra): skipped when it is not installed."""

import json

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.io.loading import detect_layout
from tiny_models import build, make_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

CASES = {
    # arch: (model kind, peft target_modules, our targets)
    "bert": ("classification", ["query", "value", "intermediate.dense"], ["q", "v", "ffn_in"]),
    "gpt2": ("base", ["c_attn", "mlp.c_proj"], ["q", "k", "v", "ffn_out"]),
    "llama": ("causal_lm", ["q_proj", "v_proj", "gate_proj", "down_proj"], ["q", "v", "ffn_gate", "ffn_out"]),
}


def _out(model, inputs):
    with torch.no_grad():
        result = model(**inputs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def _perturb_lora(model):
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("arch", sorted(CASES))
def test_peft_files_load_with_equal_outputs(tmp_path, arch, rslora):
    kind, modules, targets = CASES[arch]
    config = peft.LoraConfig(
        r=4,
        lora_alpha=12,
        target_modules=modules,
        use_rslora=rslora,
        layers_to_transform=[1] if arch == "llama" else None,
        task_type="SEQ_CLS" if kind == "classification" else None,
    )
    theirs = peft.get_peft_model(build(arch, kind), config).eval()
    _perturb_lora(theirs)
    theirs.save_pretrained(tmp_path / "a")
    assert detect_layout(tmp_path / "a") == "peft"

    ours = adapterhub.init(build(arch, kind))
    name = ours.load_adapter(tmp_path / "a", set_active=True)
    module = ours._adapterhub.adapters[name]
    assert sorted(module.config.targets) == sorted(targets)
    assert module.config.use_rslora is rslora
    assert module.config.leave_out == ((0,) if arch == "llama" else ())
    inputs = make_inputs()
    torch.testing.assert_close(_out(ours, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)
    if kind == "classification":  # modules_to_save went into the built-in head
        assert (_out(ours, inputs) - _out(build(arch, kind), inputs)).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_our_lora_saved_as_peft_loads_in_peft(tmp_path, arch):
    kind, _, targets = CASES[arch]
    ours = adapterhub.init(build(arch, kind))
    ours.add_adapter(
        "x",
        config={
            "method": "lora",
            "r": 3,
            "alpha": 6,
            "targets": targets,
            "leave_out": [0],
            "use_rslora": True,
        },
        set_active=True,
    )
    perturb(ours._adapterhub.adapters["x"])
    if kind == "classification":
        perturb(ours.classifier, seed=3)
    ours.save_adapter(tmp_path / "x", "x", layout="peft")
    theirs = peft.PeftModel.from_pretrained(build(arch, kind), tmp_path / "x").eval()
    inputs = make_inputs()
    torch.testing.assert_close(_out(theirs, inputs), _out(ours, inputs), atol=1e-5, rtol=0)
    # and back again
    again = adapterhub.init(build(arch, kind))
    again.load_adapter(tmp_path / "x", set_active=True)
    torch.testing.assert_close(_out(again, inputs), _out(ours, inputs), atol=1e-5, rtol=0)


def test_gpt2_fused_c_attn_round_trip(tmp_path):
    theirs = peft.get_peft_model(
        build("gpt2"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"])
    ).eval()
    _perturb_lora(theirs)
    theirs.save_pretrained(tmp_path / "a")
    ours = adapterhub.init(build("gpt2"))
    ours.load_adapter(tmp_path / "a", load_as="a", set_active=True)
    ours.save_adapter(tmp_path / "b", "a", layout="peft")  # q, k, v share lora_A: one LoRA on c_attn again
    back = peft.PeftModel.from_pretrained(build("gpt2"), tmp_path / "b").eval()
    inputs = make_inputs()
    torch.testing.assert_close(_out(back, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)

    ours.add_adapter("sep", config="lora[targets=[q,v]]")
    with pytest.raises(ConfigError, match=r"fused projection 'attn.c_attn'.*layout='adapterhub'"):
        ours.save_adapter(tmp_path / "c", "sep", layout="peft")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("bias", "vera_only", "bias='vera_only'"),
        ("lora_bias", True, "lora_bias=True"),
        ("layer_replication", [[0, 1]], "layer_replication="),
        ("peft_type", "HRA", "peft_type"),
        ("init_lora_weights", "future_init", "init_lora_weights='future_init'"),
    ],
)
def test_unrepresentable_options_are_refused(tmp_path, option, value, message):
    theirs = peft.get_peft_model(build("bert"), peft.LoraConfig(r=2, target_modules=["query"]))
    theirs.save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta[option] = value
    path.write_text(json.dumps(meta))
    ours = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=message):
        ours.load_adapter(tmp_path / "a")
    assert not ours._adapterhub.adapters  # nothing changed


def test_head_mismatch_is_refused(tmp_path):
    theirs = peft.get_peft_model(
        build("bert", "classification", num_labels=3),
        peft.LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"),
    )
    theirs.save_pretrained(tmp_path / "b")
    two_labels = adapterhub.init(build("bert", "classification"))
    with pytest.raises(adapterhub.errors.IncompatibleModelError, match="built-in head"):
        two_labels.load_adapter(tmp_path / "b")
    assert two_labels.load_adapter(tmp_path / "b", with_head=False) == "b"


def test_bin_weights_are_read(tmp_path):
    theirs = peft.get_peft_model(build("bert"), peft.LoraConfig(r=2, target_modules=["value"])).eval()
    _perturb_lora(theirs)
    theirs.save_pretrained(tmp_path / "a", safe_serialization=False)
    assert (tmp_path / "a" / "adapter_model.bin").exists()
    ours = adapterhub.init(build("bert"))
    ours.load_adapter(tmp_path / "a", set_active=True)
    torch.testing.assert_close(_out(ours, make_inputs()), _out(theirs, make_inputs()), atol=1e-5, rtol=0)
