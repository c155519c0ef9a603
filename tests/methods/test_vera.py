"""VeRA on tiny BERT and Llama (and GPT-2's Conv1D): peft's shared projections from the same key, equality with
peft's VeRA (same vectors), identity when new, training touches only the vectors, merge/unmerge, composition blocks,
save/load with and without the projections in the file, and what is refused."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Fuse, Stack
from adapterhub.errors import ConfigError
from adapterhub.methods.base import MODULE, MODULE_LAYER, LinearInputs
from adapterhub.spec.configs import VeraConfig, resolve_config
from method_checks import ACTIVE, check_merge, check_row_blocks, hidden, make, make_inputs
from tiny_models import build

peft = pytest.importorskip("peft", reason="peft is not installed")

ARCHS = ["bert", "llama", "gpt2"]
CONFIG = "vera[r=4,targets=[q,v,ffn_in,ffn_out]]"
TARGETS = {"bert": ["query", "value", "dense"], "llama": ["q_proj", "v_proj", "up_proj", "down_proj"]}


@pytest.fixture
def inputs():
    return make_inputs()


def test_projections_are_peft_s_for_the_same_key_and_sized_to_the_widest_target():
    for key in (0, 7):
        theirs = peft.get_peft_model(
            build("llama"), peft.VeraConfig(r=5, target_modules=TARGETS["llama"], projection_prng_key=key)
        )
        ours = adapterhub.init(build("llama"))
        ours.add_adapter(
            "x",
            config={"method": "vera", "r": 5, "target_modules": TARGETS["llama"], "projection_prng_key": key},
        )
        mine = ours._adapterhub.adapters["x"]
        assert mine.vera_A.shape == (5, 37) and mine.vera_B.shape == (
            37,
            5,
        )  # up_proj 32 -> 37, down_proj 37 -> 32
        assert torch.equal(mine.vera_A, theirs.base_model.vera_A["default"])
        assert torch.equal(mine.vera_B, theirs.base_model.vera_B["default"])
    other = adapterhub.init(build("llama"))
    other.add_adapter("y", config="vera[r=5,targets=[q,v],projection_prng_key=8]")
    assert other._adapterhub.adapters["y"].vera_A.shape == (5, 32)
    assert not torch.equal(other._adapterhub.adapters["y"].vera_A, mine.vera_A[:, :32])


@pytest.mark.parametrize("arch", ARCHS)
def test_new_is_identity_and_perturbed_changes_outputs(arch, inputs):
    model = make(arch, CONFIG)
    reference = build(arch)(**inputs).last_hidden_state
    assert torch.equal(hidden(model, inputs), reference)
    assert not torch.allclose(hidden(model, inputs, "a"), reference, atol=1e-4)
    fresh = adapterhub.init(build(arch))
    fresh.add_adapter("new", config=CONFIG, set_active=True)
    assert torch.equal(hidden(fresh, inputs, ACTIVE), reference)  # λ_b = 0
    site = fresh._adapterhub.adapters["new"].layer_at(0, "q")
    assert torch.all(site.vera_lambda_d == 0.1) and torch.all(site.vera_lambda_b == 0)
    widths = {"bert": 32 + 32 + 37 + 32, "llama": 32 + 16 + 37 + 32, "gpt2": 32 + 32 + 128 + 32}  # d_out
    assert fresh.adapter_summary()["new"].parameters == 2 * (4 * 4 + widths[arch])  # r + d_out per target


@pytest.mark.parametrize("arch", ARCHS)
def test_training_changes_only_the_vectors(arch, inputs):
    model = make(arch, CONFIG)
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    module = model._adapterhub.adapters["a"]
    projections = (module.vera_A.clone(), module.vera_B.clone())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".vera_lambda_" in n or "heads.a." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**inputs, labels=torch.tensor([0, 1, 1])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(".vera_lambda_b" in n for n in changed) and any(".vera_lambda_d" in n for n in changed)
    assert all(n.startswith(("_adapterhub.adapters.a.", "_adapterhub.heads.a.")) for n in changed)
    assert torch.equal(module.vera_A, projections[0]) and torch.equal(module.vera_B, projections[1])
    assert "vera_A" not in dict(module.named_parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_equals_unmerged_and_unmerge_restores(arch, inputs):
    check_merge(make(arch, CONFIG), inputs)


@pytest.mark.parametrize("arch", ARCHS)
def test_composition_blocks(arch, inputs):
    model = make(arch, CONFIG)
    check_row_blocks(model, inputs)
    a, b = hidden(model, inputs, "a"), hidden(model, inputs, "b")
    stacked = hidden(model, inputs, Stack("a", "b"))
    assert not torch.allclose(stacked, a, atol=1e-4) and not torch.allclose(stacked, b, atol=1e-4)
    model.add_adapter("fresh", config=CONFIG)
    torch.testing.assert_close(hidden(model, inputs, Stack("a", "fresh")), a, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match=r"Fuse"):
        model.set_active_adapters(Fuse("a", "b"))


def test_grouped_batch_split_equals_row_blocks_one_by_one():
    model = make("llama", "vera[r=4,targets=[q,v]]", names=("a",))
    model.add_adapter("b", config="vera[r=4,targets=[q,v],projection_prng_key=3]")
    model.add_adapter("c", config="vera[r=4,targets=[q,v],init_weights=false]")
    modules = [model._adapterhub.adapters[n] for n in "abc"]
    x, y = torch.randn(3, 5, 32), torch.randn(3, 5, 32)
    for sizes in ([1, 1, 1], [2, 0, 1]):
        grouped = modules[0].batch_split_grouped(modules, 0, ("linear", "q"), LinearInputs(x, y), sizes)
        rows, start = [], 0
        for adapter, size in zip(modules, sizes, strict=True):
            site = adapter.layer_at(0, "q")
            rows.append(
                site.add_to(y[start : start + size], x[start : start + size], adapter.vera_A, adapter.vera_B)
            )
            start += size
        torch.testing.assert_close(
            grouped, torch.cat(rows), atol=1e-5, rtol=0
        )  # (λ_b B)(λ_d A) x: reassociated


@pytest.mark.parametrize("save_projection", [True, False])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_save_load_round_trip(arch, save_projection, inputs, tmp_path):
    from adapterhub.io.files import read_tensors
    from adapterhub.io.manifest import inspect_adapter_dir

    config = f"vera[r=4,targets=[q,v,ffn_out],projection_prng_key=5,save_projection={str(save_projection).lower()}]"
    model = make(arch, config, names=("a",))
    expected = hidden(model, inputs, "a")
    model.save_adapter(tmp_path / "a", "a")
    saved = read_tensors(tmp_path / "a" / "adapter.safetensors")
    assert ("vera_A" in saved and "vera_B" in saved) is save_projection
    assert all(k in ("vera_A", "vera_B") or ".vera_lambda_" in k for k in saved)
    fresh = adapterhub.init(build(arch))
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(hidden(fresh, inputs, ACTIVE), expected)
    manifest = inspect_adapter_dir(tmp_path / "a")
    assert manifest.method == "vera"
    projections = 4 * 37 + 32 * 4  # A (r, 37: ffn_out's input), B (32, r)
    assert manifest.num_parameters == model.adapter_summary()["a"].parameters + projections * save_projection


def test_saved_projection_wins_over_the_key(inputs, tmp_path):
    """A file with the projections holds what was saved: loading uses them, not a fresh draw from the key."""
    model = make("bert", "vera[r=4,targets=[q,v]]", names=("a",))
    module = model._adapterhub.adapters["a"]
    with torch.no_grad():
        module.vera_A.mul_(2.0)
    expected = hidden(model, inputs, "a")
    model.save_adapter(tmp_path / "a", "a")
    fresh = adapterhub.init(build("bert"))
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(hidden(fresh, inputs, ACTIVE), expected)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_matches_peft_then_merged(arch):
    options = {"r": 4, "projection_prng_key": 11, "d_initial": 0.2}
    theirs = peft.get_peft_model(build(arch), peft.VeraConfig(target_modules=TARGETS[arch], **options)).eval()
    ours = adapterhub.init(build(arch))
    ours.add_adapter(
        "x", config={"method": "vera", "target_modules": TARGETS[arch], **options}, set_active=True
    )
    ours.eval()
    mine = ours._adapterhub.adapters["x"]
    own = {path: key for key, path in mine.module_paths().items()}
    generator = torch.Generator().manual_seed(7)
    copied = 0
    with torch.no_grad():
        for name, module in theirs.named_modules():
            if not isinstance(getattr(module, "vera_lambda_b", None), torch.nn.ParameterDict):
                continue
            path = name.removeprefix("base_model.model.")
            layer, point = own[path]
            site = mine.layer_at(layer, (MODULE, path) if layer == MODULE_LAYER else point)
            assert torch.equal(site.vera_lambda_d, module.vera_lambda_d["default"])  # d_initial
            for param in ("vera_lambda_b", "vera_lambda_d"):
                source = getattr(module, param)["default"]
                source.copy_(torch.randn(source.shape, generator=generator))
                getattr(site, param).copy_(source)
            copied += 1
    assert copied == len(own)
    inputs = make_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).last_hidden_state
        torch.testing.assert_close(ours(**inputs).last_hidden_state, expected, atol=1e-6, rtol=0)
        ours.merge_adapter("x")
        torch.testing.assert_close(ours(**inputs).last_hidden_state, expected, atol=1e-5, rtol=0)


def test_training_dropout_matches_peft_on_the_same_random_stream():
    options = {"r": 4, "vera_dropout": 0.3, "init_weights": False}
    theirs = peft.get_peft_model(build("llama"), peft.VeraConfig(target_modules=["q_proj"], **options))
    ours = adapterhub.init(build("llama"))
    ours.add_adapter("x", config={"method": "vera", "target_modules": ["q_proj"], **options}, set_active=True)
    mine = ours._adapterhub.adapters["x"]
    with torch.no_grad():
        for i in range(2):
            module = theirs.base_model.model.layers[i].self_attn.q_proj
            site = mine.layer_at(i, "q")
            site.vera_lambda_b.copy_(module.vera_lambda_b["default"])
            site.vera_lambda_d.copy_(module.vera_lambda_d["default"])
    theirs.train()
    ours.train()
    inputs = make_inputs()
    outputs = []
    for model in (theirs, ours):
        torch.manual_seed(11)
        with torch.no_grad():
            outputs.append(torch.stack([model(**inputs).last_hidden_state for _ in range(2)]))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-6, rtol=0)
    assert not torch.allclose(outputs[1][0], outputs[1][1], atol=1e-4)  # dropout drew differently per call


def test_config_keys_and_errors():
    with pytest.raises(ConfigError, match=r"Unknown key.*'alpha'.*Valid keys: r, .*projection_prng_key"):
        resolve_config({"method": "vera", "alpha": 8})
    with pytest.raises(ConfigError, match=r"Unknown key.*'rank_pattern'"):
        resolve_config({"method": "vera", "target_modules": ["query"], "rank_pattern": {"query": 2}})
    with pytest.raises(ConfigError, match=r"bias='all'.*bias='none'"):
        VeraConfig(bias="all")
    with pytest.raises(ConfigError, match=r"vera_dropout must be a number in \[0, 1\)"):
        VeraConfig(vera_dropout=1.0)
    with pytest.raises(ConfigError, match=r"projection_prng_key"):
        VeraConfig(projection_prng_key=-1)
    with pytest.raises(ConfigError, match=r"both choose where VeRA sits"):
        VeraConfig(targets=("q",), target_modules=("query",))
    assert VeraConfig().r == 256 and VeraConfig().targets == ("q", "v")
    config = VeraConfig(r=3, target_modules="all-linear", save_projection=False, layers_to_transform=None)
    assert VeraConfig.from_dict(config.to_dict()) == config


def test_refuses_embedding_and_convolution_targets():
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=r"vera on nn.Embedding is not supported"):
        model.add_adapter("e", config={"method": "vera", "r": 2, "target_modules": ["word_embeddings"]})


def test_average_adapter_sums_the_vectors_and_keeps_the_projections():
    model = make("bert", "vera[r=4,targets=[q,v]]")
    made = model.average_adapter("avg", ["a", "b"], weights=[0.5, 1.5])
    a, b = (model._adapterhub.adapters[n].state_dict() for n in "ab")
    for key, value in made.state_dict().items():
        expected = a[key] if key in ("vera_A", "vera_B") else 0.5 * a[key] + 1.5 * b[key]
        torch.testing.assert_close(value, expected)
