"""LoRA targeted by module name (``target_modules``): which modules it selects (peft's rules), and that such an
adapter behaves as a spec-targeted one: identity when inactive, trains only itself, merges, saves and loads."""

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.spec.configs import LoRAConfig
from tiny_models import build, make_inputs, perturb


def _paths(model, config, name="a"):
    model.add_adapter(name, config, overwrite_ok=True)
    return sorted(model._adapterhub.adapters[name].module_paths().values())


def _out(model, inputs):
    with torch.no_grad():
        result = model(**inputs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


@pytest.fixture
def bert():
    return adapterhub.init(build("bert", "classification")).eval()


def test_suffix_regex_exclude_and_layers(bert):
    layer = "bert.encoder.layer"
    dense = _paths(bert, {"method": "lora", "target_modules": ["dense"]})
    assert dense == sorted(
        [
            f"{layer}.{i}.{m}"
            for i in (0, 1)
            for m in ("attention.output.dense", "intermediate.dense", "output.dense")
        ]
        + ["bert.pooler.dense"]
    )
    # a suffix matches whole name parts only: "output.dense" also matches attention.output.dense
    assert _paths(bert, {"method": "lora", "target_modules": ["output.dense"]}) == sorted(
        f"{layer}.{i}.{m}" for i in (0, 1) for m in ("attention.output.dense", "output.dense")
    )
    regex = _paths(bert, {"method": "lora", "target_modules": r".*\.1\.attention\.self\.(query|value)"})
    assert regex == [f"{layer}.1.attention.self.query", f"{layer}.1.attention.self.value"]
    excluded = _paths(
        bert,
        {"method": "lora", "target_modules": ["dense"], "exclude_modules": ["pooler.dense", "output.dense"]},
    )
    assert excluded == [f"{layer}.0.intermediate.dense", f"{layer}.1.intermediate.dense"]
    layers = _paths(bert, {"method": "lora", "target_modules": ["query"], "layers_to_transform": 1})
    assert layers == [f"{layer}.1.attention.self.query"]
    patterned = _paths(
        bert,
        {
            "method": "lora",
            "target_modules": ["query"],
            "layers_to_transform": [0],
            "layers_pattern": "layer",
        },
    )
    assert patterned == [f"{layer}.0.attention.self.query"]


def test_all_linear_leaves_out_the_output_head_and_patterns_set_ranks():
    model = adapterhub.init(build("llama", "causal_lm"))
    model.add_adapter(
        "a",
        {
            "method": "lora",
            "r": 4,
            "alpha": 8,
            "target_modules": "all-linear",
            "rank_pattern": {"q_proj": 2, r"layers\.1\.mlp\.down_proj": 6},
            "alpha_pattern": {"v_proj": 3},
        },
    )
    module = model._adapterhub.adapters["a"]
    paths = set(module.module_paths().values())
    linear = {
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "_adapterhub" not in n
    }
    assert paths == linear - {"lm_head"}
    ranks = {point: lora.lora_A.shape[0] for layer, point, lora in module.lora_targets() if layer == 1}
    assert ranks["q"] == 2 and ranks["ffn_out"] == 6 and ranks["k"] == 4
    scaling = {point: lora.scaling for layer, point, lora in module.lora_targets() if layer == 0}
    assert scaling["v"] == pytest.approx(3 / 4) and scaling["q"] == pytest.approx(8 / 2)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_all_linear_on_a_classifier_leaves_out_its_head_as_peft_does_for_seq_cls(arch):
    """peft's all-linear with task_type SEQ_CLS leaves out ``classifier`` (BERT) / ``score`` (Llama): ours selects
    the same modules (the classifier trains whole with the adapter)."""
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(
        build(arch, "classification"),
        peft.LoraConfig(r=4, target_modules="all-linear", task_type="SEQ_CLS"),
    )
    expected = {
        n.removeprefix("base_model.model.").removesuffix(".lora_A.default")
        for n, _ in theirs.named_modules()
        if n.endswith(".lora_A.default")
    }
    ours = adapterhub.init(build(arch, "classification"))
    assert set(_paths(ours, {"method": "lora", "r": 4, "target_modules": "all-linear"})) == expected
    assert not any(p.split(".")[0] in ("classifier", "score") for p in expected)


def test_bad_selections_are_refused(bert):
    with pytest.raises(ConfigError, match=r"selects no module.*dense"):
        bert.add_adapter("a", {"method": "lora", "target_modules": ["nothing_here"]})
    with pytest.raises(ConfigError, match=r"'bert.encoder.layer.0.attention', a BertAttention"):
        bert.add_adapter("a", {"method": "lora", "target_modules": r"bert\.encoder\.layer\.0\.attention"})
    with pytest.raises(ConfigError, match=r"targets=.*target_modules=.*both"):
        LoRAConfig(targets=("q",), target_modules=("query",))
    with pytest.raises(ConfigError, match="needs target_modules"):
        LoRAConfig(rank_pattern={"q": 2})
    with pytest.raises(
        ConfigError, match=r"layers_to_transform cannot be used when target_modules is a regex"
    ):
        LoRAConfig(target_modules="query", layers_to_transform=[0])
    with pytest.raises(ConfigError, match="set layers_to_transform too"):
        LoRAConfig(target_modules=["query"], layers_pattern="layer")
    with pytest.raises(ConfigError, match=r"rank_pattern.*positive integer"):
        LoRAConfig(target_modules=["query"], rank_pattern={"query": 0})
    with pytest.raises(ConfigError, match=r"Unknown key.*target_module.*target_modules"):
        LoRAConfig.from_dict({"target_module": ["query"]})
    assert not bert._adapterhub.adapters


def test_config_round_trip_and_preset_override():
    config = LoRAConfig(target_modules=["dense", "query"], rank_pattern={"query": 2}, layers_to_transform=1)
    assert LoRAConfig.from_dict(config.to_dict()) == config
    assert config.targets == () and config.layers_to_transform == (1,)
    assert "target_modules" not in LoRAConfig().to_dict()  # spec-targeted configs keep their JSON and hash
    preset = adapterhub.spec.configs.resolve_config("lora[target_modules=[query,dense]]")
    assert preset.target_modules == ("query", "dense") and preset.targets == ()


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_module_targets_behave_like_spec_targets(tmp_path, bert, method):
    inputs = make_inputs()
    base = _out(bert, inputs)
    bert.add_adapter("a", {"method": method, "r": 2, "target_modules": ["query", "pooler.dense"]})
    perturb(bert._adapterhub.adapters["a"])
    assert torch.equal(_out(bert, inputs), base)  # not active: bit-identical
    bert.set_active_adapters("a")
    active = _out(bert, inputs)
    assert (active - base).abs().max() > 1e-3
    # the pooler's LoRA acts: switching it off alone changes the output
    pooler = bert._adapterhub.adapters["a"].by_name["bert:pooler:dense"]
    saved = pooler.lora_B.detach().clone()
    with torch.no_grad():
        pooler.lora_B.zero_()
    assert (_out(bert, inputs) - active).abs().max() > 1e-4
    with torch.no_grad():
        pooler.lora_B.copy_(saved)

    bert.merge_adapter("a")
    torch.testing.assert_close(_out(bert, inputs), active, atol=1e-5, rtol=0)
    bert.unmerge_adapter("a")
    torch.testing.assert_close(_out(bert, inputs), active, atol=1e-5, rtol=0)

    bert.save_adapter(tmp_path / "a", "a")
    again = adapterhub.init(build("bert", "classification")).eval()
    again.load_adapter(tmp_path / "a", set_active=True)
    torch.testing.assert_close(_out(again, inputs), active, atol=0, rtol=0)


def test_training_changes_only_the_adapter():
    model = adapterhub.init(build("gpt2"))
    model.add_adapter("a", {"method": "lora", "r": 2, "target_modules": ["c_attn", "c_fc"]})
    model.train_adapter("a")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("_adapterhub.adapters.a.") for n in trainable)
    assert any("by_name.h:0:attn:c_attn" in n for n in trainable)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        out = model(**make_inputs()).last_hidden_state
        out.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("_adapterhub.adapters.a.") for k in changed)
    assert any("lora_B" in k and "by_name" in k for k in changed)
