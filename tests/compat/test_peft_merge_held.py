"""Merging LoRA adapters that keep copies of the model's biases (``bias="all"`` / ``"lora_only"``) or embedding rows
(``trainable_token_indices``): ``merge_adapter`` writes them into the model as peft's ``merge_and_unload`` leaves
them (equal outputs to peft's merged model), the adapter's hooks stop replacing them, and ``unmerge_adapter`` puts
the model's own values back bit for bit."""

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from tiny_models import build, make_inputs

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

IDS = make_inputs()["input_ids"][0, :3].tolist()  # ids that occur in the inputs


def _out(model, inputs):
    with torch.no_grad():
        result = model(**inputs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def _trained_peft(model, config, seed=7):
    theirs = peft.get_peft_model(model, config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in theirs.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return theirs


CASES = [
    ("bert", "base", {}, dict(target_modules=["query", "value"], bias="all")),
    ("bert", "base", {}, dict(target_modules=["query", "value"], bias="lora_only")),
    ("llama", "causal_lm", {}, dict(target_modules=["q_proj"], trainable_token_indices=IDS)),
    (
        "llama",
        "causal_lm",
        {"tie_word_embeddings": True},
        dict(target_modules=["q_proj"], trainable_token_indices=IDS),
    ),
    (
        "bert",
        "base",
        {},
        dict(target_modules=["query"], bias="all", trainable_token_indices={"word_embeddings": IDS}),
    ),
]


@pytest.mark.parametrize(("arch", "kind", "overrides", "options"), CASES)
def test_merge_matches_peft_merge_and_unload_and_unmerge_restores(tmp_path, arch, kind, overrides, options):
    inputs = make_inputs()
    theirs = _trained_peft(build(arch, kind, **overrides), peft.LoraConfig(r=2, lora_alpha=4, **options))
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(build(arch, kind, **overrides)).eval()
    before = {k: v.clone() for k, v in ours.state_dict().items() if not k.startswith("_adapterhub")}
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    adapted = _out(ours, inputs)
    merged_theirs = _out(theirs.merge_and_unload(), inputs)
    torch.testing.assert_close(adapted, merged_theirs, atol=1e-5, rtol=0)
    ours.merge_adapter("p")
    torch.testing.assert_close(_out(ours, inputs), merged_theirs, atol=1e-5, rtol=0)
    held = ours._adapterhub.adapters["p"]
    with (
        torch.no_grad()
    ):  # the hooks no longer replace what the merge wrote: changing the copies changes nothing
        for param in [*held.biases.values(), *held.tokens.values()]:
            param.add_(5.0)
    torch.testing.assert_close(_out(ours, inputs), merged_theirs, atol=1e-5, rtol=0)
    with torch.no_grad():
        for param in [*held.biases.values(), *held.tokens.values()]:
            param.sub_(5.0)
    ours.unmerge_adapter("p")
    after = {k: v for k, v in ours.state_dict().items() if not k.startswith("_adapterhub")}
    changed = [k for k in before if "bias" in k or "embed" in k]
    assert changed and all(torch.equal(after[k], before[k]) for k in changed)  # bit for bit
    torch.testing.assert_close(_out(ours, inputs), adapted, atol=1e-5, rtol=0)
    ours.set_active_adapters(None)
    base = adapterhub.init(build(arch, kind, **overrides)).eval()
    torch.testing.assert_close(_out(ours, inputs), _out(base, inputs), atol=1e-6, rtol=0)


def test_two_merged_adapters_holding_one_bias_are_refused():
    model = adapterhub.init(build("bert")).eval()
    for name in ("a", "b"):
        model.add_adapter(name, {"method": "lora", "r": 2, "target_modules": ["query"], "bias": "lora_only"})
    model.set_active_adapters("a")
    model.merge_adapter("a")
    from adapterhub.spec.composition import Stack

    model.set_active_adapters(Stack("a", "b"))
    with pytest.raises(ConfigError, match=r"Adapters 'a' \(merged\) and 'b' both keep their own copy"):
        model.merge_adapter("b")
    assert model.merged_adapters == ["a"]
    with (
        torch.no_grad(),
        pytest.raises(ConfigError, match=r"\['a'\] \(merged\) and \['b'\] each keep a copy"),
    ):
        model(**make_inputs())


def test_weighted_combination_takes_the_first_adapters_tokens_as_peft(tmp_path):
    """peft's add_weighted_adapter copies the first adapter's config: trainable_token_indices with the embedding's
    own rows; LoRA's A and B combine as usual. Equal outputs with peft's combined adapter active."""
    inputs = make_inputs()
    ours = adapterhub.init(build("llama", "causal_lm")).eval()
    options = {"method": "lora", "r": 2, "alpha": 4}
    ours.add_adapter("a", {**options, "targets": ["q"], "trainable_token_indices": IDS})
    ours.add_adapter("b", {**options, "targets": ["q", "v"], "trainable_token_indices": IDS[:2]})
    for seed, name in enumerate(("a", "b")):
        generator = torch.Generator().manual_seed(seed + 3)
        with torch.no_grad():
            for param in ours._adapterhub.adapters[name].parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
        ours.save_adapter(tmp_path / name, name, layout="peft")
    theirs = peft.PeftModel.from_pretrained(
        build("llama", "causal_lm"), tmp_path / "a", adapter_name="a"
    ).eval()
    theirs.load_adapter(tmp_path / "b", adapter_name="b")
    theirs.add_weighted_adapter(["a", "b"], [0.7, 0.4], "c", combination_type="cat")
    theirs.set_adapter("c")
    expected = _out(theirs, inputs)
    ours.average_adapter("c", ["a", "b"], weights=[0.7, 0.4], combine="cat", set_active=True)
    assert ours.adapters["c"].trainable_token_indices == tuple(IDS)
    torch.testing.assert_close(_out(ours, inputs), expected, atol=1e-5, rtol=0)
    ours.set_active_adapters("a")
    assert (_out(ours, inputs) - expected).abs().max() > 1e-3


def test_weighted_combination_of_held_biases_is_refused():
    model = adapterhub.init(build("bert")).eval()
    model.add_adapter("a", {"method": "lora", "r": 2, "targets": ["q"], "bias": "lora_only"})
    model.add_adapter("b", {"method": "lora", "r": 2, "targets": ["q"]})
    with pytest.raises(
        ConfigError, match=r"cannot combine \['a'\]: they keep their own copies of the model's biases"
    ):
        model.average_adapter("c", ["a", "b"], combine="cat")
