"""peft LoRA files on encoder-decoder models (T5, BART), targeting modules by name in both stacks (self- and
cross-attention, FFN, the LM head): identical outputs to peft, written back with the same tensors, both ways."""

import pytest
import torch
from safetensors.torch import load_file

import adapterhub
from adapterhub.errors import ConfigError
from tiny_models import build, make_seq2seq_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

CASES = [
    ("t5", {"target_modules": ["q", "v", "wo"], "layers_to_transform": [0]}),
    ("t5", {"target_modules": ["q", "v", "wo", "lm_head"], "rank_pattern": {"wo": 3}}),
    ("bart", {"target_modules": "all-linear"}),
    ("bart", {"target_modules": ["q_proj", "v_proj"], "use_dora": True}),
]


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(("arch", "options"), CASES)
def test_peft_files_both_ways(tmp_path, arch, options):
    theirs = peft.get_peft_model(
        build(arch, "seq2seq_lm"), peft.LoraConfig(r=2, lora_alpha=4, **options)
    ).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in theirs.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_seq2seq_inputs()
    ours = adapterhub.init(build(arch, "seq2seq_lm"))
    base = _logits(ours, inputs)
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    adapted = _logits(ours, inputs)
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(adapted, _logits(theirs, inputs), atol=1e-5, rtol=0)
    decoder_points = [k for k in ours._adapterhub.adapters["p"].module_paths() if k[0] >= 2]
    assert decoder_points  # layers of the decoder stack sit at their spec points
    ours.save_adapter(tmp_path / "x", "p", layout="peft", with_head=False)
    saved, written = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "p", tmp_path / "x"))
    # peft also saves the whole embedding matrix when the (tied) LM head is a target (save_embedding_layers); the
    # model's own is used, so that copy is not written back
    kept = {k: v for k, v in saved.items() if not k.endswith(".base_layer.weight")}
    assert sorted(written) == sorted(kept)
    for key, tensor in kept.items():
        assert torch.equal(written[key], tensor), key
    back = peft.PeftModel.from_pretrained(build(arch, "seq2seq_lm"), tmp_path / "x").eval()
    torch.testing.assert_close(_logits(back, inputs), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_spec_targets_write_peft(tmp_path, arch):
    ours = adapterhub.init(build(arch, "seq2seq_lm"))
    ours.add_adapter("a", "lora[r=2,targets=[q,v,cross_q,cross_v,ffn_out]]", set_active=True)
    perturb(ours._adapterhub.adapters["a"], std=0.3, seed=2)
    inputs = make_seq2seq_inputs()
    ours.save_adapter(tmp_path / "x", "a", layout="peft", with_head=False)
    back = peft.PeftModel.from_pretrained(build(arch, "seq2seq_lm"), tmp_path / "x").eval()
    torch.testing.assert_close(_logits(back, inputs), _logits(ours, inputs), atol=1e-5, rtol=0)
    again = adapterhub.init(build(arch, "seq2seq_lm"))
    again.load_adapter(tmp_path / "x", load_as="x", set_active=True)
    torch.testing.assert_close(_logits(again, inputs), _logits(ours, inputs), atol=1e-5, rtol=0)


def test_other_methods_are_refused(tmp_path):
    ours = adapterhub.init(build("t5", "seq2seq_lm"))
    ours.add_adapter("i", "ia3")
    with pytest.raises(ConfigError, match="encoder-decoder models writes LoRA and DoRA"):
        ours.save_adapter(tmp_path / "i", "i", layout="peft")
    theirs = peft.get_peft_model(
        build("t5", "seq2seq_lm"), peft.IA3Config(target_modules=["k", "v"], feedforward_modules=[])
    )
    theirs.save_pretrained(tmp_path / "p")
    with pytest.raises(ConfigError, match="reads peft LoRA / DoRA files for those"):
        ours.load_adapter(tmp_path / "p")
