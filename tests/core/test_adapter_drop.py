"""AdapterDrop (``skip_layers``): the adapters of the skipped layers do not run, so the outputs equal those of the
same adapter without those layers; model-level and per-call, for points in the layers (bottleneck, LoRA) and module
points inside them (LN tuning); training is untouched when unset; what cannot hold is refused."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from method_checks import ACTIVE, hidden, make_inputs, perturb
from tiny_models import build


def _pair(arch: str, config: str, without: str | dict):
    """A model with adapter ``a`` (all layers) and ``b`` (``a``'s weights, layer 0 left out by its config)."""
    model = adapterhub.init(build(arch))
    model.add_adapter("a", config)
    perturb(model._adapterhub.adapters["a"], seed=4, std=0.3)
    model.add_adapter("b", without)
    adapters = model._adapterhub.adapters
    own = adapters["b"].state_dict()
    adapters["b"].load_state_dict({k: v for k, v in adapters["a"].state_dict().items() if k in own})
    return model


CASES = [
    ("bert", "pfeiffer", "pfeiffer[leave_out=[0]]"),
    ("llama", "lora[r=2,targets=[q,v,ffn_out]]", "lora[r=2,targets=[q,v,ffn_out],leave_out=[0]]"),
    ("bert", "ln_tuning", {"method": "ln_tuning", "exclude_modules": r"encoder\.layer\.0\..*"}),
]


@pytest.mark.parametrize(("arch", "config", "without"), CASES)
def test_skipped_layers_equal_the_adapter_without_them(arch, config, without):
    model = _pair(arch, config, without)
    inputs = make_inputs()
    full, expected = hidden(model, inputs, "a"), hidden(model, inputs, "b")
    assert not torch.equal(full, expected)
    with torch.no_grad(), model.adapter_setup("a", skip_layers=[0]):
        assert torch.equal(model(**inputs).last_hidden_state, expected)
    model.set_active_adapters("a")
    model.set_skip_layers([0])
    assert model.skip_layers == (0,)
    assert torch.equal(hidden(model, inputs, ACTIVE), expected)
    with torch.no_grad(), model.adapter_setup("a", skip_layers=[]):  # a call may run every layer again
        assert torch.equal(model(**inputs).last_hidden_state, full)
    model.set_skip_layers(range(model.config.num_hidden_layers))
    assert torch.equal(
        hidden(model, inputs, ACTIVE), hidden(model, inputs, None)
    )  # every layer skipped: bare
    model.set_skip_layers(None)
    assert torch.equal(hidden(model, inputs, ACTIVE), full)


def test_training_is_untouched_when_unset_and_skipped_layers_get_no_gradient():
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", "pfeiffer")
    model.train_adapter("a")
    inputs = make_inputs()

    def grads() -> set[str]:
        model.zero_grad(set_to_none=True)
        model(**inputs).last_hidden_state.pow(2).sum().backward()
        return {n for n, p in model._adapterhub.adapters["a"].named_parameters() if p.grad is not None}

    every = grads()
    assert any(n.startswith("layers.0.") for n in every) and any(n.startswith("layers.1.") for n in every)
    model.set_skip_layers([0])
    assert grads() == {n for n in every if not n.startswith("layers.0.")}


def test_what_cannot_hold_is_refused():
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", "lora", set_active=True)
    with pytest.raises(ConfigError, match=r"layer\(s\) \[5\], but the model has 2 layers"):
        model.set_skip_layers([0, 5])
    with pytest.raises(ConfigError, match="list of layer indices"):
        model.set_skip_layers(1)
    model.set_skip_layers([1])
    with pytest.raises(ConfigError, match="set_skip_layers\\(None\\) before merging"):
        model.merge_adapter("a")
    model.set_skip_layers(None)
    model.merge_adapter("a")
    with pytest.raises(ConfigError, match="merged into the base weights of every layer"):
        model.set_skip_layers([0])
