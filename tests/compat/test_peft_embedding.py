"""LoRA on nn.Embedding selected by target_modules (peft's lora_embedding_A ``(r, num_embeddings)`` and
lora_embedding_B ``(embedding_dim, r)``): the math, merging, and peft's files both ways with identical outputs."""

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.spec.composition import BatchSplit
from method_checks import randomize_peft_lora
from tiny_models import build, make_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)


def _out(model, inputs):
    with torch.no_grad():
        result = model(**inputs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def test_embedding_lora_math_merge_and_batch_split():
    model = adapterhub.init(build("bert")).eval()
    inputs = make_inputs()
    base = _out(model, inputs)
    model.add_adapter("a", {"method": "lora", "r": 3, "alpha": 6, "target_modules": ["word_embeddings"]})
    lora = model._adapterhub.adapters["a"].by_name["embeddings:word_embeddings"]
    embedding = model.embeddings.word_embeddings
    assert lora.lora_A.shape == (3, embedding.num_embeddings) and lora.lora_B.shape == (
        embedding.embedding_dim,
        3,
    )
    model.set_active_adapters("a")
    assert torch.equal(_out(model, inputs), base)  # A starts at zero
    perturb(model._adapterhub.adapters["a"], std=0.3, seed=2)
    ids = inputs["input_ids"]
    model.set_active_adapters(None)
    with torch.no_grad():  # peft's Embedding: base + (A.T[ids] @ B.T) * scaling
        expected = embedding(ids) + (lora.lora_A.t()[ids] @ lora.lora_B.t()) * 2.0
        handle = embedding.register_forward_hook(lambda m, a, o: expected)
        reference = _out(model, inputs)
        handle.remove()
        model.set_active_adapters("a")
    adapted = _out(model, inputs)
    torch.testing.assert_close(adapted, reference, atol=1e-5, rtol=0)
    assert (adapted - base).abs().max() > 1e-3
    model.merge_adapter("a")
    torch.testing.assert_close(_out(model, inputs), adapted, atol=1e-5, rtol=0)
    model.unmerge_adapter("a")
    torch.testing.assert_close(_out(model, inputs), adapted, atol=1e-5, rtol=0)
    model.add_adapter("b", {"method": "lora", "r": 3, "target_modules": ["word_embeddings"]})
    perturb(model._adapterhub.adapters["b"], std=0.3, seed=3)
    rows = ids.shape[0] // 2
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[rows, ids.shape[0] - rows]))
    split = _out(model, inputs)
    model.set_active_adapters("b")
    only_b = _out(model, inputs)
    torch.testing.assert_close(split[:rows], adapted[:rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(split[rows:], only_b[rows:], atol=1e-5, rtol=0)


def test_embeddings_are_not_linear_and_dora_is_refused():
    model = adapterhub.init(build("llama", "causal_lm"))
    model.add_adapter("all", {"method": "lora", "target_modules": "all-linear"})
    assert not any("embed" in p for p in model._adapterhub.adapters["all"].module_paths().values())
    with pytest.raises(ConfigError, match=r"dora on nn\.Embedding is not supported"):
        model.add_adapter("d", {"method": "dora", "target_modules": ["embed_tokens"]})


def test_peft_embed_tokens_round_trip(tmp_path):
    theirs = peft.get_peft_model(
        build("llama", "causal_lm"),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]),
    ).eval()
    randomize_peft_lora(theirs)
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build("llama", "causal_lm")).eval()
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert "model.embed_tokens" in ours._adapterhub.adapters["p"].module_paths().values()
    torch.testing.assert_close(_out(ours, inputs), _out(theirs, inputs), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    back = peft.PeftModel.from_pretrained(build("llama", "causal_lm"), tmp_path / "x").eval()
    torch.testing.assert_close(_out(back, inputs), _out(ours, inputs), atol=1e-5, rtol=0)
    again = adapterhub.init(build("llama", "causal_lm")).eval()
    again.load_adapter(tmp_path / "x", load_as="x", set_active=True)
    torch.testing.assert_close(_out(again, inputs), _out(ours, inputs), atol=1e-5, rtol=0)
