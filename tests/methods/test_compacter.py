"""Compacter / Compacter++ (PHM bottleneck adapters)."""

import json
from pathlib import Path

import pytest
import torch

import adapterhub
from adapterhub import Fuse
from adapterhub.spec.configs import resolve_config
from method_checks import check_row_blocks
from tiny_models import ARCHITECTURES, build, make_inputs

CONFIG = "compacter[reduction_factor=2]"
COUNTS = (
    Path(__file__).resolve().parent.parent
    / "fixtures"
    / "adapters_lib"
    / "bert_param_counts"
    / "expected.json"
)


def hidden(model, **inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def perturb(model, name, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if name in key.split("."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def kron_reference(rule, w):
    return sum(torch.kron(rule[i], w[i]) for i in range(rule.shape[0]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("config", [CONFIG, "compacter++[reduction_factor=2]"])
def test_inactive_is_bit_identical_and_active_changes_output(arch, config):
    model = build(arch)
    inputs = make_inputs()
    base = hidden(model, **inputs)
    adapterhub.init(model)
    model.add_adapter("c", config=config)
    perturb(model, "c")
    assert torch.equal(hidden(model, **inputs), base)
    model.set_active_adapters("c")
    assert not torch.allclose(hidden(model, **inputs), base)


@pytest.mark.parametrize(
    "config",
    [CONFIG, "compacter[reduction_factor=2,factorized_phm_W=false,shared_phm_rule=false,phm_bias=false]"],
)
def test_phm_layer_matches_sum_of_kronecker_products(config):
    model = adapterhub.init(build("bert"))
    model.add_adapter("c", config=config)
    perturb(model, "c")
    module = next(m for m in model.modules() if type(m).__name__ == "CompacterAdapter")
    down = module.layer_at(0, "ffn").down
    w = torch.bmm(down.W_left, down.W_right) if down.config.factorized_phm_W else down.W
    h = kron_reference(down.rule(), w)  # (d_in, d_out)
    x = torch.randn(2, 5, 32)
    expected = x @ h + (down.b if down.b is not None else 0)
    assert torch.allclose(down(x), expected, atol=1e-5)
    assert torch.allclose(down.weight, h.t(), atol=1e-6)


def test_one_training_step_changes_only_the_adapter_including_the_shared_rule():
    model = adapterhub.init(build("bert"))
    model.add_adapter("c", config=CONFIG)
    model.train_adapter("c")
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    model(**make_inputs()).last_hidden_state.pow(2).mean().backward()
    rule = next(p for k, p in model.named_parameters() if k.endswith("c.shared.phm_rule"))
    # tiny at init (the rule starts at N(0, 1e-4)), but there
    assert rule.grad is not None and rule.grad.abs().max() > 0
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    changed = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    assert changed and all("c" in k.split(".") for k in changed)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_save_load_round_trip_keeps_the_shared_rule(arch, tmp_path):
    model = adapterhub.init(build(arch))
    model.add_adapter("c", config=CONFIG, set_active=True)
    perturb(model, "c")
    inputs = make_inputs()
    expected = hidden(model, **inputs)
    model.save_adapter(tmp_path / "c", "c")
    other = adapterhub.init(build(arch))
    other.load_adapter(tmp_path / "c", set_active=True)
    assert torch.equal(hidden(other, **inputs), expected)


def test_row_blocks_parallel_average_split_equal_single_adapters_and_fuse_runs():
    model = adapterhub.init(build("bert"))
    for name, seed in (("a", 1), ("b", 2)):
        model.add_adapter(name, config=CONFIG)
        perturb(model, name, seed)
    inputs = make_inputs()
    check_row_blocks(model, inputs)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.set_active_adapters(Fuse("a", "b"))
    assert hidden(model, **inputs).shape == (*inputs["input_ids"].shape, model.config.hidden_size)


def test_parameter_counts_equal_the_adapters_library():
    """Counts written by scripts/compat/make_adapters_fixtures.py --group par_bn (the `adapters` library)."""
    counts = json.loads(COUNTS.read_text())["counts"]
    for key, entry in counts.items():
        model = adapterhub.init(build("bert"))
        model.add_adapter("a", config=entry["ours"])
        module = next(m for m in model.modules() if getattr(m, "adapter_name", None) == "a")
        ours = sum(p.numel() for p in module.parameters())
        assert ours == entry["count"], key


def test_presets():
    assert resolve_config("compacterpp") == resolve_config("compacter++")
    plus = resolve_config("compacter++")
    full = resolve_config("compacter")
    assert (full.after_attention, full.original_ln_before, full.non_linearity) == (True, False, "gelu")
    assert (plus.after_attention, plus.original_ln_before, plus.reduction_factor) == (False, True, 32.0)
