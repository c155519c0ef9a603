"""Parallel bottleneck adapters (preset ``parallel`` / ``par_bn``) on every supported architecture."""

import pytest
import torch

import adapterhub
from adapterhub import Average, ConfigError, Fuse, Stack
from method_checks import check_row_blocks
from tiny_models import ARCHITECTURES, build, make_inputs


def hidden(model, **inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def perturb(model, name, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if f".{name}." in f".{key}." and ("layers" in key):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def adapter_params(model, name):
    return {k: p for k, p in model.named_parameters() if p.requires_grad and name in k.split(".")}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_inactive_is_bit_identical_and_active_changes_output(arch):
    model = build(arch)
    inputs = make_inputs()
    base = hidden(model, **inputs)
    adapterhub.init(model)
    model.add_adapter("p", config="par_bn[after_attention=true]")
    perturb(model, "p")
    assert torch.equal(hidden(model, **inputs), base)
    model.set_active_adapters("p")
    assert not torch.allclose(hidden(model, **inputs), base)
    model.set_active_adapters(None)
    assert torch.equal(hidden(model, **inputs), base)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_formula_at_one_site_matches_a_hand_written_reference(arch):
    """Post-norm: out = LN(h + s·A(x) + x); pre-norm: stream = x + h + s·A(x), with x the sub-layer input."""
    model = adapterhub.init(build(arch))
    model.add_adapter("p", config="par_bn", set_active=True)
    perturb(model, "p")
    module = next(m for m in model.modules() if type(m).__name__ == "ParallelAdapter")
    layer = module.layer_at(0, "ffn")
    from adapterhub.methods.base import ResidualInputs

    torch.manual_seed(0)
    x = torch.randn(2, 5, 32)
    h = torch.randn(2, 5, 32)
    norm = torch.nn.LayerNorm(32)
    a = layer.up.weight @ torch.relu(layer.down.weight @ x.unsqueeze(-1) + layer.down.bias.unsqueeze(-1))
    delta = 4.0 * (a.squeeze(-1) + layer.up.bias)
    if module.dims.pre_norm:
        got = module.forward_at(0, ("residual", "ffn"), ResidualInputs(h, x, None))
        expected = h + delta  # the layer then adds x
    else:
        got = module.forward_at(0, ("residual", "ffn"), ResidualInputs(h, x, norm))
        expected = norm(h + delta + x)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_one_training_step_changes_only_the_adapter(arch):
    model = adapterhub.init(build(arch))
    model.add_adapter("p", config="par_bn")
    model.train_adapter("p")
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    out = model(**make_inputs()).last_hidden_state
    out.pow(2).mean().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    changed = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    assert changed and all(".p." in f".{k}." for k in changed)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_save_load_round_trip(arch, tmp_path):
    model = adapterhub.init(build(arch))
    model.add_adapter("p", config="par_bn[after_attention=true,scaling=learned]", set_active=True)
    perturb(model, "p")
    inputs = make_inputs()
    expected = hidden(model, **inputs)
    model.save_adapter(tmp_path / "p", "p")
    other = adapterhub.init(build(arch))
    other.load_adapter(tmp_path / "p", set_active=True)
    assert torch.equal(hidden(other, **inputs), expected)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_row_blocks_parallel_average_split_equal_single_adapters(arch):
    model = adapterhub.init(build(arch))
    for name, seed in (("a", 1), ("b", 2)):
        model.add_adapter(name, config="par_bn", set_active=False)
        perturb(model, name, seed)
    check_row_blocks(model, make_inputs())


def test_composition_rules():
    model = adapterhub.init(build("bert"))
    for name in ("a", "b"):
        model.add_adapter(name, config="par_bn")
    model.add_adapter("seq", config="pfeiffer")
    inputs = make_inputs()
    # Fuse is refused, naming the method
    with pytest.raises(ConfigError, match="parallel"):
        model.set_active_adapters(Fuse("a", "b"))
        hidden(model, **inputs)
    # a parallel adapter after another adapter in a Stack is refused
    model.set_active_adapters(Stack("seq", "a"))
    with pytest.raises(ConfigError, match="first adapter of a Stack"):
        hidden(model, **inputs)
    # first in a Stack: a sequential adapter after it sees h + s·A(x) as the sub-layer output
    model.set_active_adapters(Stack("a", "seq"))
    hidden(model, **inputs)
    # Average runs
    model.set_active_adapters(Average("a", "b"))
    hidden(model, **inputs)


def test_preset_alias_and_defaults():
    from adapterhub.spec.configs import resolve_config

    config = resolve_config("par_bn")
    assert config == resolve_config("parallel")
    assert (config.method, config.reduction_factor, config.scaling, config.init_weights) == (
        "parallel",
        2.0,
        4.0,
        "mam_adapter",
    )
    with pytest.raises(ConfigError, match="does not apply to a parallel adapter"):
        resolve_config("par_bn[residual_before_ln=false]")
