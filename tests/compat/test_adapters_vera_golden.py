"""VeRA adapters saved by the `adapters` library (1.3.0): BERT q, v (alpha / r = 2); Llama k, v (grouped-query, so
both 32 -> 16) with layer 0 left out and vera_d / vera_b other than the defaults; GPT-2 ``c_fc`` (Conv1D). That
library trains full ``vera_D`` / ``vera_B`` matrices (the fixtures hold full noise) and scales by ``alpha / r``:
ours reads them as VeRA with ``lambda_form="matrix"`` and computes the same last hidden states, writes them back
key for key, and that library loads what we write (also our vector-form VeRA) with the same outputs."""

import json

import pytest
import torch

from adapterhub.errors import ConfigError
from golden import (
    FIXTURES,
    check_adapters_library_loads,
    check_written_in_their_layout,
    hidden,
    load_golden,
    needs_adapters_venv,
)

CASES = {"bert_vera": None, "llama_vera": "eager", "gpt2_vera": "eager"}


def _close(got: torch.Tensor, want: list) -> None:
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_their_vera_loads_with_the_same_outputs(case):
    model, inputs, expected = load_golden(case, CASES[case])
    name = model.load_adapter(FIXTURES / case / "adapter", set_active=True)
    config = model.adapters[name]
    assert config.method == "vera"
    assert config.lambda_form == "matrix"
    assert config.scaling == expected["config"]["alpha"] / expected["config"]["r"]
    _close(hidden(model, **inputs), expected["last_hidden_state"])
    _close(hidden(model, **inputs), expected["last_hidden_state_reloaded"])
    model.set_active_adapters(None)
    _close(hidden(model, **inputs), expected["last_hidden_state_without_adapter"])


def test_matrix_form_merges_to_the_same_outputs():
    model, inputs, expected = load_golden("bert_vera")
    name = model.load_adapter(FIXTURES / "bert_vera" / "adapter", set_active=True)
    model.merge_adapter(name)
    _close(hidden(model, **inputs), expected["last_hidden_state"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_written_in_their_layout(tmp_path, case):
    model, _, expected = load_golden(case, CASES[case])
    name = check_written_in_their_layout(model, case, tmp_path / "theirs", expected)
    # read back by ours: the same adapter
    again = model.load_adapter(tmp_path / "theirs", load_as="again")
    state = model._adapterhub.adapters
    assert all(torch.equal(state["again"].state_dict()[k], v) for k, v in state[name].state_dict().items())
    assert again == "again"


def test_matrix_form_trains_every_entry():
    """Their matrices are full parameters: a training step moves off-diagonal entries, as in that library."""
    model, inputs, _ = load_golden("bert_vera")
    model.add_adapter("fresh", "vera[r=4,lambda_form=matrix,b_initial=0.3]", set_active=True)
    model.train_adapter("fresh")
    site = model._adapterhub.adapters["fresh"].site(0, "q")
    assert site.vera_lambda_b.shape == (32, 32) and site.vera_lambda_d.shape == (4, 4)
    assert torch.equal(site.vera_lambda_b, 0.3 * torch.eye(32))
    model(**inputs).last_hidden_state.pow(2).mean().backward()
    grad = site.vera_lambda_b.grad
    assert grad is not None and (grad - torch.diag(torch.diag(grad))).abs().max() > 0


def test_peft_layout_refuses_the_matrix_form(tmp_path):
    model, _, _ = load_golden("bert_vera")
    name = model.load_adapter(FIXTURES / "bert_vera" / "adapter")
    with pytest.raises(ConfigError, match="no peft form"):
        model.save_adapter(tmp_path / "peft", name, layout="peft")


def test_targets_of_different_shapes_are_refused(tmp_path):
    model, _, _ = load_golden("llama_vera", "eager")
    model.add_adapter("qv", "vera[r=4,targets=[q,v]]")  # q: 32 -> 32, v: 32 -> 16
    with pytest.raises(ConfigError, match="different shapes"):
        model.save_adapter(tmp_path / "theirs", "qv", layout="adapters")


def test_fused_gpt2_attention_is_refused(tmp_path):
    model, _, _ = load_golden("gpt2_vera", "eager")
    model.add_adapter("qv", "vera[r=4]")
    with pytest.raises(ConfigError, match="fused"):
        model.save_adapter(tmp_path / "theirs", "qv", layout="adapters")


@needs_adapters_venv
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_adapters_library_loads_what_we_write(tmp_path, case):
    model, _, _ = load_golden(case, CASES[case])
    name = model.load_adapter(FIXTURES / case / "adapter")
    model.save_adapter(tmp_path / "theirs", name, layout="adapters")
    check_adapters_library_loads(case, tmp_path / "theirs", CASES[case], adapter_model=True)


@needs_adapters_venv
def test_the_adapters_library_loads_our_vector_vera(tmp_path):
    """Our peft-style VeRA (vectors, no scaling, projections from the key) written in their layout: that library
    computes what ours does."""
    model, inputs, expected = load_golden("bert_vera")
    model.add_adapter("ours", "vera[r=4,save_projection=false]", set_active=True)
    with torch.no_grad():
        for param in model._adapterhub.adapters["ours"].parameters():
            param.normal_(0, 0.5)
    ours = hidden(model, **inputs)
    assert (ours - torch.tensor(expected["last_hidden_state_without_adapter"])).abs().max() > 1e-2
    model.save_adapter(tmp_path / "theirs", "ours", layout="adapters")
    case = tmp_path / "case"
    (case).mkdir()
    (case / "base").symlink_to(FIXTURES / "bert_vera" / "base")
    (case / "expected.json").write_text(json.dumps({**expected, "last_hidden_state": ours.tolist()}))
    check_adapters_library_loads("bert_vera", tmp_path / "theirs", adapter_model=True, fixture=case)


def test_matrix_form_round_trips_in_our_layout(tmp_path):
    model, inputs, expected = load_golden("bert_vera")
    name = model.load_adapter(FIXTURES / "bert_vera" / "adapter")
    model.save_adapter(tmp_path / "ours", name)
    again = model.load_adapter(tmp_path / "ours", load_as="again", set_active=True)
    assert model.adapters[again].lambda_form == "matrix"
    _close(hidden(model, **inputs), expected["last_hidden_state"])
