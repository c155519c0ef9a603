"""LoRA's ``trainable_token_indices`` (peft's TrainableTokensLayer): only the listed embedding rows train, as the
adapter's copy, used while it is active (tied output heads too); peft's files both ways (outputs, keys, values)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.spec.composition import BatchSplit
from tiny_models import build, make_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

IDS = make_inputs()["input_ids"][0, :3].tolist()  # ids that occur in the inputs


def _logits(model, inputs=None):
    with torch.no_grad():
        return model(**(inputs or make_inputs())).logits


def _peft(model, indices, targets=("q_proj",)):
    theirs = peft.get_peft_model(
        model,
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=list(targets), trainable_token_indices=indices),
    ).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in theirs.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return theirs


def test_only_the_listed_rows_train_and_replace_the_models_while_active(tmp_path):
    model = adapterhub.init(build("llama", "causal_lm"))
    inputs = make_inputs()
    base = _logits(model, inputs)
    model.add_adapter("a", {"method": "lora", "target_modules": ["q_proj"], "trainable_token_indices": IDS})
    model.set_active_adapters("a")
    assert torch.equal(_logits(model, inputs), base)  # the copy starts as the model's rows
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "_adapterhub.adapters.a.tokens.model:embed_tokens" in trainable
    assert not any(n.startswith("model.") or n.startswith("lm_head") for n in trainable)
    rows = model._adapterhub.adapters["a"].tokens["model:embed_tokens"]
    assert rows.shape == (3, model.config.hidden_size)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        rows.add_(1.0)
        embedded = model.model.embed_tokens(inputs["input_ids"])
    listed = torch.isin(inputs["input_ids"], torch.tensor(IDS))
    original = model.model.embed_tokens.weight[inputs["input_ids"]]
    assert torch.equal(embedded[~listed], original[~listed])  # other ids: the model's rows
    torch.testing.assert_close(embedded[listed], original[listed] + 1.0)
    adapted = _logits(model, inputs)
    model.save_adapter(tmp_path / "a", "a")
    again = adapterhub.init(build("llama", "causal_lm"))
    again.load_adapter(tmp_path / "a", set_active=True)
    torch.testing.assert_close(_logits(again, inputs), adapted, atol=1e-6, rtol=0)
    model.set_active_adapters(None)
    assert torch.equal(_logits(model, inputs), base)


@pytest.mark.parametrize("tied", [False, True])
def test_peft_files_both_ways(tmp_path, tied):
    theirs = _peft(build("llama", "causal_lm", tie_word_embeddings=tied), IDS)
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build("llama", "causal_lm", tie_word_embeddings=tied))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert ours.adapters["p"].trainable_token_indices == tuple(IDS)
    assert ours._adapterhub.adapters["p"].token_paths() == (
        ("model.embed_tokens", "lm_head") if tied else ("model.embed_tokens",)
    )
    torch.testing.assert_close(_logits(ours, inputs), _logits(theirs, inputs), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft", with_head=False)
    assert json.loads((tmp_path / "x" / "adapter_config.json").read_text())["trainable_token_indices"] == IDS
    saved, written = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "p", tmp_path / "x"))
    assert sorted(written) == sorted(saved)
    for key, tensor in saved.items():
        assert torch.equal(written[key], tensor), key
    back = peft.PeftModel.from_pretrained(
        build("llama", "causal_lm", tie_word_embeddings=tied), tmp_path / "x"
    )
    torch.testing.assert_close(_logits(back.eval(), inputs), _logits(ours, inputs), atol=1e-5, rtol=0)


def test_named_embedding_on_bert(tmp_path):
    theirs = _peft(build("bert", "classification"), {"word_embeddings": IDS}, targets=("query",))
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(build("bert", "classification")).eval()
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert dict(ours.adapters["p"].trainable_token_indices) == {"word_embeddings": tuple(IDS)}
    torch.testing.assert_close(_logits(ours), _logits(theirs), atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft", with_head=False)
    back = peft.PeftModel.from_pretrained(build("bert", "classification"), tmp_path / "x").eval()
    torch.testing.assert_close(_logits(back), _logits(ours), atol=1e-5, rtol=0)


def test_batch_split_rows_and_refusals():
    model = adapterhub.init(build("llama", "causal_lm"))
    for name, seed in (("a", 1), ("b", 2)):
        model.add_adapter(
            name, {"method": "lora", "target_modules": ["q_proj"], "trainable_token_indices": IDS}
        )
        perturb(model._adapterhub.adapters[name], std=0.3, seed=seed)
    inputs = make_inputs()
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        alone[name] = _logits(model, inputs)
    model.set_active_adapters(None)
    alone[None] = _logits(model, inputs)
    model.set_active_adapters(BatchSplit("b", None, "a", batch_sizes=(1, 1, 1)))
    mixed = _logits(model, inputs)
    for row, name in enumerate(("b", None, "a")):
        torch.testing.assert_close(mixed[row], alone[name][row], atol=1e-5, rtol=0)
    model.set_active_adapters("a")
    model.merge_adapter("a")  # its rows go into the embedding (tests/compat/test_peft_merge_held.py)
    torch.testing.assert_close(_logits(model, inputs), alone["a"], atol=1e-5, rtol=0)
    model.unmerge_adapter("a")
    config = {"method": "lora", "target_modules": ["q_proj"]}
    for indices, message in (
        ({"q_proj": [1]}, "must name one nn.Embedding"),
        ([1, 1], "lists a token id twice"),
        ([10_000], f"token id 10000 for 'model.embed_tokens', which has {model.config.vocab_size} rows"),
        ([-1], "integers >= 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            model.add_adapter("x", {**config, "trainable_token_indices": indices})
    with pytest.raises(ConfigError, match="both in trainable_token_indices and"):
        model.add_adapter(
            "x", {**config, "trainable_token_indices": IDS, "modules_to_save": ["embed_tokens"]}
        )
