"""EVA (init='eva' + model.initialize_eva) equals peft 0.21.2's initialize_lora_eva_weights on a tiny BERT and a
tiny Llama with a fixed dataloader: the A factors, the redistributed ranks and alphas (rank_pattern /
alpha_pattern), the outputs; peft's saved EVA adapters load identically, ours load in peft; errors are clear."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.methods.base import MODULE_LAYER
from adapterhub.spec.configs import LoRAConfig
from tiny_models import build

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)
from peft.tuners.lora.config import EvaConfig  # noqa: E402
from peft.tuners.lora.eva import initialize_lora_eva_weights  # noqa: E402

# query / key / value (and Llama's q / k / v, gate / up) share their input: one SVD per group, as peft
TARGETS = {
    "bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
}


def batches(n: int = 6, size: int = 4, seq: int = 9, labels: bool = False, seed: int = 0) -> list[dict]:
    """``n`` fixed batches of token ids (row 0 padded after position 6; labels -100 at the first two positions)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 99, (size, seq), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if labels:
            label = ids.clone()
            label[:, :2] = -100
            batch["labels"] = label
        out.append(batch)
    return out


def pair(arch: str, data: list[dict], eva: dict, targets=None, r: int = 4, alpha: float = 8):
    """(peft model, our model, our new config), both EVA-initialised on ``data``."""
    targets = TARGETS[arch] if targets is None else targets
    torch.manual_seed(3)
    theirs = peft.get_peft_model(
        build(arch),
        peft.LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=targets,
            init_lora_weights="eva",
            eva_config=EvaConfig(**eva),
        ),
    )
    initialize_lora_eva_weights(theirs, data, show_progress_bar=False)
    ours = adapterhub.init(build(arch))
    config = {
        "method": "lora",
        "r": r,
        "alpha": alpha,
        "target_modules": targets,
        "init": "eva",
        "eva_config": eva,
    }
    ours.add_adapter("x", config, set_active=True)
    new = ours.initialize_eva("x", data)
    return theirs.eval(), ours.eval(), new


def target_paths(arch: str) -> list[str]:
    """The module paths TARGETS[arch] selects (peft's suffix rule)."""
    return [
        n for n, _ in build(arch).named_modules() if any(n == t or n.endswith("." + t) for t in TARGETS[arch])
    ]


def our_layers(model) -> dict:
    lora = model._adapterhub.adapters["x"]
    return {
        path: lora.layer_at(layer, ("module", path) if layer == MODULE_LAYER else point)
        for (layer, point), path in lora.module_paths().items()
    }


def set_same_b(theirs, ours, seed: int = 7) -> None:
    """The same random B in both (EVA's B is zero: the outputs then test A and the scaling)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for path, mine in sorted(our_layers(ours).items()):
            b = torch.randn(mine.lora_B.shape, generator=generator) * 0.1
            mine.lora_B.copy_(b)
            theirs.base_model.model.get_submodule(path).lora_B["default"].weight.copy_(b)


def check_equal(theirs, ours, new: LoRAConfig) -> None:
    peft_config = theirs.peft_config["default"]
    assert dict(new.rank_pattern) == peft_config.rank_pattern
    assert dict(new.alpha_pattern) == peft_config.alpha_pattern
    peft_paths = {
        name
        for name, module in theirs.base_model.model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    }
    layers = our_layers(ours)
    assert set(layers) == peft_paths
    for path, mine in layers.items():
        module = theirs.base_model.model.get_submodule(path)
        torch.testing.assert_close(mine.lora_A, module.lora_A["default"].weight, atol=1e-5, rtol=0)
        assert mine.scaling == pytest.approx(module.scaling["default"])
    set_same_b(theirs, ours)
    inputs = batches(n=1, seed=9)[0]
    with torch.no_grad():
        expected = theirs(**inputs).last_hidden_state
        got = ours(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize(
    ("eva", "labels"),
    [
        ({"rho": 2.0, "tau": 0.9}, False),
        ({"rho": 2.0, "tau": 0.9, "whiten": True}, True),
        ({"rho": 3.0, "tau": 0.9, "adjust_scaling_factors": False}, True),
        ({"rho": 2.0, "tau": 0.9, "use_label_mask": False}, True),
    ],
)
def test_eva_equals_peft(arch, eva, labels):
    theirs, ours, new = pair(arch, batches(labels=labels), eva)
    assert new.rank_pattern  # ranks were redistributed (rho > 1)
    # the budget (r per target) is kept
    assert sum(layer.lora_A.shape[0] for layer in our_layers(ours).values()) == 4 * len(target_paths(arch))
    check_equal(theirs, ours, new)


def test_given_state_dict_with_rank_zero_targets_equals_peft():
    """initialize_eva(eva_state_dict=...) as peft's: a (0, d_in) entry drops the target (peft removes its LoRA
    layer), other ranks set rank_pattern and (adjust_scaling_factors) alpha_pattern."""
    paths = target_paths("llama")
    generator = torch.Generator().manual_seed(1)
    rows = {0: 0, 1: 6, 2: 2, 5: 0}  # target index -> rank (others keep r = 4)
    base = build("llama")
    states = {
        p: torch.randn(rows.get(i, 4), base.get_submodule(p).in_features, generator=generator)
        for i, p in enumerate(paths)
    }
    torch.manual_seed(3)
    theirs = peft.get_peft_model(
        build("llama"),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS["llama"], init_lora_weights="eva"),
    )
    initialize_lora_eva_weights(
        theirs, eva_state_dict={f"base_model.model.{p}": a for p, a in states.items()}
    )
    ours = adapterhub.init(build("llama"))
    config = {"method": "lora", "r": 4, "alpha": 8, "target_modules": TARGETS["llama"], "init": "eva"}
    ours.add_adapter("x", config, set_active=True)
    new = ours.initialize_eva("x", eva_state_dict=states)
    assert (
        set(our_layers(ours))
        == set(new.target_modules)
        == {p for i, p in enumerate(paths) if rows.get(i) != 0}
    )
    check_equal(theirs.eval(), ours.eval(), new)
    del states[paths[3]]
    ours.add_adapter("y", config)
    with pytest.raises(ConfigError, match=f"no components for target.*{paths[3]}"):
        ours.initialize_eva("y", eva_state_dict=states)


def test_rho_one_keeps_every_rank():
    theirs, ours, new = pair("bert", batches(), {"rho": 1.0, "tau": 0.9})
    assert new.rank_pattern == () and new.alpha_pattern == ()
    assert all(layer.lora_A.shape[0] == 4 for layer in our_layers(ours).values())
    check_equal(theirs, ours, new)


def test_spec_targets_become_module_names():
    """targets=('q', 'v') is rebuilt by name (the modules peft's ['query', 'value'] selects)."""
    data = batches()
    torch.manual_seed(3)
    theirs = peft.get_peft_model(
        build("bert"),
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["query", "value"],
            init_lora_weights="eva",
            eva_config=EvaConfig(tau=0.9),
        ),
    )
    initialize_lora_eva_weights(theirs, data, show_progress_bar=False)
    ours = adapterhub.init(build("bert"))
    ours.add_adapter("x", {"method": "lora", "r": 4, "alpha": 8, "init": "eva", "eva_config": {"tau": 0.9}})
    ours.set_active_adapters("x")
    new = ours.initialize_eva("x", data)
    assert new.by_name and new.targets == ()
    check_equal(theirs.eval(), ours.eval(), new)


def test_peft_files_load_identically(tmp_path):
    theirs, ours, _ = pair("llama", batches(labels=True), {"rho": 2.0, "tau": 0.9})
    set_same_b(theirs, ours)
    theirs.save_pretrained(tmp_path / "peft")
    loaded = adapterhub.init(build("llama"))
    name = loaded.load_adapter(str(tmp_path / "peft"), load_as="x", set_active=True)
    assert name == "x"
    inputs = batches(n=1, seed=9)[0]
    with torch.no_grad():
        expected = theirs.eval()(**inputs).last_hidden_state
        got = loaded.eval()(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    config = loaded._adapterhub.adapters["x"].config
    assert dict(config.rank_pattern) == theirs.peft_config["default"].rank_pattern


def test_ours_saved_in_peft_layout_load_in_peft(tmp_path):
    theirs, ours, _ = pair("bert", batches(), {"rho": 2.0, "tau": 0.9})
    set_same_b(theirs, ours)
    ours.save_adapter(tmp_path / "ours", "x", layout="peft")
    reloaded = peft.PeftModel.from_pretrained(build("bert"), tmp_path / "ours").eval()
    saved = reloaded.peft_config["default"]
    assert saved.init_lora_weights == "eva" and saved.eva_config.tau == 0.9
    assert saved.rank_pattern == theirs.peft_config["default"].rank_pattern
    inputs = batches(n=1, seed=9)[0]
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**inputs).last_hidden_state, ours(**inputs).last_hidden_state, atol=1e-5, rtol=0
        )


def test_our_save_round_trip(tmp_path):
    _, ours, new = pair("bert", batches(), {"rho": 2.0, "tau": 0.9})
    ours.save_adapter(tmp_path / "ours", "x")
    other = adapterhub.init(build("bert"))
    other.load_adapter(str(tmp_path / "ours"), set_active=True)
    assert other._adapterhub.adapters["x"].config == new
    inputs = batches(n=1, seed=9)[0]
    with torch.no_grad():  # loaded weights: no data pass needed
        torch.testing.assert_close(other(**inputs).last_hidden_state, ours(**inputs).last_hidden_state)


def new_eva(arch: str = "bert", **eva) -> torch.nn.Module:
    model = adapterhub.init(build(arch))
    config = {
        "method": "lora",
        "r": 4,
        "target_modules": TARGETS[arch],
        "init": "eva",
        "eva_config": eva or None,
    }
    model.add_adapter("x", config, set_active=True)
    return model


def test_forward_or_training_before_the_data_pass_is_refused():
    model = new_eva()
    with pytest.raises(ConfigError, match=r"initialize_eva\('x', dataloader\)"):
        model(**batches(n=1)[0])
    model.train_adapter("x")
    with pytest.raises(ConfigError, match="init='eva'"):
        model(**batches(n=1)[0]).last_hidden_state.sum().backward()
    with pytest.raises(ConfigError, match="init='eva'"):
        model.merge_adapter("x")


def test_dataloader_without_target_inputs():
    model = new_eva(tau=0.9)
    with pytest.raises(ConfigError, match="empty"):
        model.initialize_eva("x", [])
    with pytest.raises(ConfigError, match="gave no inputs to target"):
        model.initialize_eva("x", batches(n=2), forward_fn=lambda m, b: None)
    masked = batches(n=2, labels=True)
    for batch in masked:
        batch["labels"][:] = -100  # every position masked out: no rows for the SVD
    with pytest.raises(ConfigError, match="too few input rows"):
        model.initialize_eva("x", masked)
    with pytest.raises(ConfigError, match="max_steps=2"):
        new_eva(tau=1.0).initialize_eva("x", batches(n=4), max_steps=2)
    # still waiting for its data pass
    with pytest.raises(ConfigError, match="initialize_eva"):
        model(**batches(n=1)[0])


def test_config_checks():
    with pytest.raises(ConfigError, match="Valid keys: rho, tau"):
        LoRAConfig(init="eva", eva_config={"rhoo": 2})
    with pytest.raises(ConfigError, match="rho must be"):
        LoRAConfig(init="eva", eva_config={"rho": 0.5})
    with pytest.raises(ConfigError, match="applies to init='eva' only"):
        LoRAConfig(eva_config={"rho": 2})
    config = LoRAConfig(init="eva", eva_config={"whiten": True})
    assert config.eva.whiten and config.eva.rho == 2.0
    assert LoRAConfig.from_dict(config.to_dict()) == config
    model = adapterhub.init(build("bert"))
    model.add_adapter("plain", {"method": "lora"})
    with pytest.raises(ConfigError, match="not a LoRA adapter with init='eva'"):
        model.initialize_eva("plain", batches(n=1))


def test_training_after_the_data_pass():
    """train_adapter before or after initialize_eva: one step updates the rebuilt adapter's A and B only."""
    model = new_eva(tau=0.9)
    model.train_adapter("x")
    model.initialize_eva("x", batches())
    model.train_adapter("x")
    model.train()
    model(**batches(n=1)[0]).last_hidden_state.pow(2).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(".lora_A" in n or ".lora_B" in n for n in grads)
    assert any(".lora_B" in n for n in grads)
