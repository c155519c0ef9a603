"""peft LoRA files that target modules by name (not spec points alone), both ways, with real peft: peft saves ->
our load_adapter gives its outputs; our save_adapter(layout="peft") -> peft loads with our outputs."""

import json

import pytest
import torch

import adapterhub
from adapterhub.errors import AdapterFileError
from tiny_models import build, make_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)


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


CASES = {
    # the common BERT recipe: "dense" is also the pooler, attention.output.dense and output.dense
    "bert_pooler": ("bert", "base", {"target_modules": ["query", "key", "value", "dense"]}),
    "llama_all_linear": (
        "llama",
        "causal_lm",
        {
            "target_modules": "all-linear",
            "rank_pattern": {"q_proj": 2, "layers.1.mlp.down_proj": 6},
            "alpha_pattern": {"v_proj": 3.0, "gate_proj": 7.0},
        },
    ),
    "bert_layers": (
        "bert",
        "base",
        {"target_modules": ["query", "dense"], "layers_to_transform": [1], "layers_pattern": "layer"},
    ),
    # a whole name is selected whatever layers_to_transform says (as peft does)
    "llama_layers_exact": (
        "llama",
        "causal_lm",
        {"target_modules": ["q_proj", "model.layers.0.mlp.down_proj"], "layers_to_transform": [1]},
    ),
    "gpt2_conv1d": (
        "gpt2",
        "base",
        {"target_modules": ["c_attn", "attn.c_proj", "c_fc"], "use_rslora": True},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_targeting_round_trip(tmp_path, case):
    arch, kind, options = CASES[case]
    theirs = peft.get_peft_model(build(arch, kind), peft.LoraConfig(r=4, lora_alpha=8, **options)).eval()
    _perturb_lora(theirs)
    theirs.save_pretrained(tmp_path / "a")
    inputs = make_inputs()
    expected = _out(theirs, inputs)

    ours = adapterhub.init(build(arch, kind)).eval()
    name = ours.load_adapter(tmp_path / "a", set_active=True)
    module = ours._adapterhub.adapters[name]
    if module.config.by_name:  # else: spec targets in every adapted layer (the spec reader)
        peft_targets = {k for k, m in theirs.base_model.model.named_modules() if hasattr(m, "lora_A")}
        assert set(module.module_paths().values()) == peft_targets
    torch.testing.assert_close(_out(ours, inputs), expected, atol=1e-5, rtol=0)
    assert (_out(ours, inputs) - _out(build(arch, kind), inputs)).abs().max() > 1e-3  # the adapter acts

    ours.save_adapter(tmp_path / "b", name, layout="peft")
    back = peft.PeftModel.from_pretrained(build(arch, kind), tmp_path / "b").eval()
    torch.testing.assert_close(_out(back, inputs), expected, atol=1e-5, rtol=0)


def test_pooler_target_is_a_module_point_and_spec_modules_take_the_fast_path(tmp_path):
    theirs = peft.get_peft_model(build("bert"), peft.LoraConfig(r=2, target_modules=["query", "dense"]))
    theirs.save_pretrained(tmp_path / "a")
    ours = adapterhub.init(build("bert"))
    module = ours._adapterhub.adapters[ours.load_adapter(tmp_path / "a")]
    assert [p for _, p in module.points(-1)] == ["pooler.dense"]
    assert {p for _, p in module.points(0)} == {"q", "attn_out", "ffn_in", "ffn_out"}


def test_our_all_linear_adapter_is_read_by_peft(tmp_path):
    ours = adapterhub.init(build("llama", "causal_lm")).eval()
    ours.add_adapter(
        "x",
        {"method": "lora", "r": 3, "alpha": 5, "target_modules": "all-linear", "rank_pattern": {"o_proj": 5}},
        set_active=True,
    )
    perturb(ours._adapterhub.adapters["x"])
    ours.save_adapter(tmp_path / "x", "x", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert "lm_head" not in meta["target_modules"] and meta["rank_pattern"] == {"o_proj": 5}
    theirs = peft.PeftModel.from_pretrained(build("llama", "causal_lm"), tmp_path / "x").eval()
    inputs = make_inputs()
    torch.testing.assert_close(_out(theirs, inputs), _out(ours, inputs), atol=1e-5, rtol=0)


def test_peft_option_without_its_tensors_is_refused(tmp_path):
    """trainable_token_indices is honoured (tests/compat/test_peft_tokens.py); a file that sets it without the rows
    peft saves with it is refused, naming the missing rows."""
    theirs = peft.get_peft_model(build("bert"), peft.LoraConfig(r=2, target_modules=["dense"]))
    theirs.save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta["trainable_token_indices"] = [1, 2]
    path.write_text(json.dumps(meta))
    ours = adapterhub.init(build("bert"))
    with pytest.raises(AdapterFileError, match=r"missing \['tokens\.embeddings:word_embeddings'\]"):
        ours.load_adapter(tmp_path / "a")
    assert not ours._adapterhub.adapters
