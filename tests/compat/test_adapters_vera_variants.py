"""The `adapters` library's (1.3.0) VeRA variants: gated VeRA (``use_gating``: the update times
``mean_T sigmoid(gate(x))`` in place of ``alpha / r``) and DVoRA (``use_dora``: the output times
``m / ‖W + ΔW₀‖``, bias included, ``ΔW₀`` without ``alpha / r``). Fixtures by
scripts/compat/make_adapters_vera_fixtures.py (``bert_vera_gated``, ``bert_dvora``, ``llama_dvora_gated``): ours
reads their files with their outputs, writes them back key for key, that library loads what we write with the same
outputs, training moves the gate / magnitude and the matrices only; gated VeRA is not merged (as theirs), DVoRA
merges to its own outputs."""

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

GATED = {"bert_vera_gated": None}


def _close(got: torch.Tensor, want: list) -> None:
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-4)


def _check_reads_back_in_both_layouts(model, tmp_path, inputs, expected) -> None:
    """What we wrote in their layout (``tmp_path/theirs``) reads back with the fixture's outputs, and so does it
    saved again in ours."""
    model.load_adapter(tmp_path / "theirs", load_as="again", set_active=True)
    _close(hidden(model, **inputs), expected["last_hidden_state"])
    model.save_adapter(tmp_path / "ours", "again")  # our layout round trip
    model.load_adapter(tmp_path / "ours", load_as="ours", set_active=True)
    _close(hidden(model, **inputs), expected["last_hidden_state"])


@pytest.mark.parametrize("case", sorted(GATED))
def test_their_gated_vera_loads_with_the_same_outputs(case):
    model, inputs, expected = load_golden(case, GATED[case])
    name = model.load_adapter(FIXTURES / case / "adapter", set_active=True)
    config = model.adapters[name]
    assert config.method == "vera" and config.use_gating and config.lambda_form == "matrix"
    site = model._adapterhub.adapters[name].site(0, "q")
    assert site.gate is not None and site.gate.weight.shape == (1, 32)
    _close(hidden(model, **inputs), expected["last_hidden_state"])
    model.set_active_adapters(None)
    _close(hidden(model, **inputs), expected["last_hidden_state_without_adapter"])


def test_the_gate_is_what_scales_the_update():
    """Replacing the gate's bias moves the output (the gate is used), and ``scaling`` is not applied on top."""
    model, inputs, expected = load_golden("bert_vera_gated")
    name = model.load_adapter(FIXTURES / "bert_vera_gated" / "adapter", set_active=True)
    adapter = model._adapterhub.adapters[name]
    with torch.no_grad():
        for _, _, site in adapter.lora_targets():
            site.gate.weight.zero_()
            site.gate.bias.fill_(50.0)  # sigmoid = 1: the bare update, no alpha / r = 2
    ungated = hidden(model, **inputs)
    model.add_adapter("plain", "vera[r=4,lambda_form=matrix,scaling=1.0]", set_active=True)
    state = {k: v for k, v in adapter.state_dict().items() if ".gate." not in k}
    model._adapterhub.adapters["plain"].load_state_dict(state)
    torch.testing.assert_close(hidden(model, **inputs), ungated, atol=1e-6, rtol=0)
    assert (ungated - torch.tensor(expected["last_hidden_state"])).abs().max() > 1e-3


@needs_adapters_venv
def test_the_adapters_library_loads_a_fresh_gated_vera_we_trained(tmp_path):
    """A gated VeRA made and changed by ours (vector form, scaling 1: their alpha = r): that library computes what
    ours does."""
    model, inputs, expected = load_golden("bert_vera")
    model.add_adapter("ours", "vera[r=4,use_gating=true,save_projection=false]", set_active=True)
    with torch.no_grad():
        for param in model._adapterhub.adapters["ours"].parameters():
            param.add_(torch.randn_like(param) * 0.5)
    ours = hidden(model, **inputs)
    assert (ours - torch.tensor(expected["last_hidden_state_without_adapter"])).abs().max() > 1e-2
    model.save_adapter(tmp_path / "theirs", "ours", layout="adapters")
    case = tmp_path / "case"
    case.mkdir()
    (case / "base").symlink_to(FIXTURES / "bert_vera" / "base")
    (case / "expected.json").write_text(json.dumps({**expected, "last_hidden_state": ours.tolist()}))
    check_adapters_library_loads("bert_vera", tmp_path / "theirs", adapter_model=True, fixture=case)


def test_gated_vera_trains_the_gate_and_the_matrices_only():
    model, inputs, _ = load_golden("bert_vera_gated")
    name = model.load_adapter(FIXTURES / "bert_vera_gated" / "adapter")
    model.train_adapter(name)
    model(**inputs).last_hidden_state.pow(2).mean().backward()
    adapter = model._adapterhub.adapters[name]
    grads = {k: p.grad for k, p in adapter.named_parameters()}
    assert {k.rsplit(".", 1)[-1] for k in grads} == {"vera_lambda_b", "vera_lambda_d", "weight", "bias"}
    assert all(g is not None and g.abs().max() > 0 for g in grads.values()), [
        k for k, g in grads.items() if g is None
    ]
    assert not any(p.requires_grad for n, p in model.named_parameters() if "_adapterhub" not in n)
    assert adapter.vera_A.grad is None and not adapter.vera_A.requires_grad


def test_gated_vera_is_not_merged_and_has_no_peft_form(tmp_path):
    model, _, _ = load_golden("bert_vera_gated")
    name = model.load_adapter(FIXTURES / "bert_vera_gated" / "adapter", set_active=True)
    with pytest.raises(ConfigError, match="cannot be merged"):
        model.merge_adapter(name)
    with pytest.raises(ConfigError, match="no peft form"):
        model.save_adapter(tmp_path / "peft", name, layout="peft")


def test_gated_vera_in_a_batch_split_equals_separate_passes():
    model, inputs, _ = load_golden("bert_vera_gated")
    name = model.load_adapter(FIXTURES / "bert_vera_gated" / "adapter")
    other = model.load_adapter(FIXTURES / "bert_vera" / "adapter", load_as="other")
    model.set_active_adapters(name)
    first = hidden(model, **inputs)
    model.set_active_adapters(other)
    second = hidden(model, **inputs)
    from adapterhub import BatchSplit

    model.set_active_adapters(BatchSplit(name, other, batch_sizes=[1, inputs["input_ids"].shape[0] - 1]))
    both = hidden(model, **inputs)
    torch.testing.assert_close(both[:1], first[:1], atol=1e-6, rtol=0)
    torch.testing.assert_close(both[1:], second[1:], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ DVoRA (use_dora)

DORA = {"bert_dvora": None, "llama_dvora_gated": "eager"}


@pytest.mark.parametrize("case", sorted(DORA))
def test_their_dvora_loads_with_the_same_outputs(case):
    model, inputs, expected = load_golden(case, DORA[case])
    name = model.load_adapter(FIXTURES / case / "adapter", set_active=True)
    config = model.adapters[name]
    assert config.use_dora and config.use_gating == expected["config"]["use_gating"]
    _close(hidden(model, **inputs), expected["last_hidden_state"])
    model.set_active_adapters(None)
    _close(hidden(model, **inputs), expected["last_hidden_state_without_adapter"])


def test_dvora_output_is_their_formula():
    """One projection: ``m / ‖W + ΔW₀‖ · (W x + b + s ΔW₀ x)`` with the norm without ``s`` (their alpha / r = 2)
    and the bias rescaled; peft's DoRA (norm with ``s``, bias not rescaled) differs."""
    from adapterhub.methods.base import LinearInputs

    model, _, _ = load_golden("bert_dvora")
    name = model.load_adapter(FIXTURES / "bert_dvora" / "adapter")
    adapter = model._adapterhub.adapters[name]
    site = adapter.site(1, "v")
    dense = model.encoder.layer[1].attention.self.value
    weight, bias = dense.weight.detach(), dense.bias.detach()  # (32, 32), (32,)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.linear(x, weight, bias)
    with torch.no_grad():
        got = site.add_dora(y, LinearInputs(x, y, weight, bias), adapter.vera_A, adapter.vera_B)
        delta0 = site.vera_lambda_b @ adapter.vera_B @ site.vera_lambda_d @ adapter.vera_A  # (32, 32)
        k = site.magnitude / torch.linalg.norm(weight + delta0, dim=1)
        want = k * (y + 2.0 * x @ delta0.t())
        # peft's DoRA: the norm with the scaling, the bias not rescaled
        k2 = site.magnitude / torch.linalg.norm(weight + 2.0 * delta0, dim=1)
        peft_like = k2 * (x @ (weight + 2.0 * delta0).t()) + bias
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert (got - peft_like).abs().max() > 1e-3
    # after an earlier Stack step changed y: that step's update is kept as is, W x + b recomputed and rescaled
    other = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        inputs = LinearInputs(x, y + other, weight, bias, untouched=False)
        stacked = site.add_dora(y + other, inputs, adapter.vera_A, adapter.vera_B)
    torch.testing.assert_close(stacked, want + other, atol=1e-5, rtol=1e-5)


def test_a_new_dvora_starts_at_the_weight_norm_and_the_identity():
    model, inputs, expected = load_golden("bert_dvora")
    model.add_adapter("fresh", "vera[r=4,lambda_form=matrix,scaling=2.0,use_dora=true]", set_active=True)
    site = model._adapterhub.adapters["fresh"].site(0, "q")
    weight = model.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(site.magnitude.detach(), torch.linalg.norm(weight.detach(), dim=1))
    _close(hidden(model, **inputs), expected["last_hidden_state_without_adapter"])


@needs_adapters_venv
def test_the_adapters_library_loads_a_fresh_dvora_we_changed(tmp_path):
    """A DVoRA made by ours (vector form, scaling 1, projections from the key), its vectors and magnitudes
    changed: that library computes what ours does."""
    model, inputs, expected = load_golden("bert_vera")
    model.add_adapter("ours", "vera[r=4,use_dora=true,save_projection=false]", set_active=True)
    with torch.no_grad():
        for key, param in model._adapterhub.adapters["ours"].named_parameters():
            noise = torch.randn_like(param)
            param.mul_(1 + 0.2 * noise) if key.endswith("magnitude") else param.add_(0.5 * noise)
    ours = hidden(model, **inputs)
    assert (ours - torch.tensor(expected["last_hidden_state_without_adapter"])).abs().max() > 1e-2
    model.save_adapter(tmp_path / "theirs", "ours", layout="adapters")
    case = tmp_path / "case"
    case.mkdir()
    (case / "base").symlink_to(FIXTURES / "bert_vera" / "base")
    (case / "expected.json").write_text(json.dumps({**expected, "last_hidden_state": ours.tolist()}))
    check_adapters_library_loads("bert_vera", tmp_path / "theirs", adapter_model=True, fixture=case)


@pytest.mark.parametrize("case", sorted(DORA))
def test_dvora_trains_the_magnitude_the_gate_and_the_matrices_only(case):
    model, inputs, _ = load_golden(case, DORA[case])
    name = model.load_adapter(FIXTURES / case / "adapter")
    model.train_adapter(name)
    model(**inputs).last_hidden_state.pow(2).mean().backward()
    adapter = model._adapterhub.adapters[name]
    grads = {k: p.grad for k, p in adapter.named_parameters()}
    kinds = {"vera_lambda_b", "vera_lambda_d", "magnitude"} | (
        {"weight", "bias"} if "gated" in case else set()
    )
    assert {k.rsplit(".", 1)[-1] for k in grads} == kinds
    assert all(g is not None and g.abs().max() > 0 for g in grads.values()), [
        k for k, g in grads.items() if g is None
    ]
    assert not any(p.requires_grad for n, p in model.named_parameters() if "_adapterhub" not in n)
    assert not adapter.vera_A.requires_grad and not adapter.vera_B.requires_grad


def test_dvora_merges_to_its_outputs_and_unmerges_to_the_base():
    model, inputs, expected = load_golden("bert_dvora")
    before = {k: v.clone() for k, v in model.state_dict().items() if "_adapterhub" not in k}
    name = model.load_adapter(FIXTURES / "bert_dvora" / "adapter", set_active=True)
    model.merge_adapter(name)
    _close(hidden(model, **inputs), expected["last_hidden_state"])
    model.unmerge_adapter(name)
    after = {k: v for k, v in model.state_dict().items() if "_adapterhub" not in k}
    assert all(torch.allclose(after[k], before[k], atol=1e-5, rtol=1e-5) for k in before)
    _close(hidden(model, **inputs), expected["last_hidden_state"])


def test_gated_dvora_is_not_merged_and_dvora_has_no_peft_form(tmp_path):
    model, _, _ = load_golden("llama_dvora_gated", "eager")
    name = model.load_adapter(FIXTURES / "llama_dvora_gated" / "adapter", set_active=True)
    with pytest.raises(ConfigError, match="cannot be merged"):
        model.merge_adapter(name)
    model.add_adapter("plain", "vera[r=4,use_dora=true]")
    with pytest.raises(ConfigError, match="no peft form"):
        model.save_adapter(tmp_path / "peft", "plain", layout="peft")


def test_dvora_on_a_conv1d_has_no_form_in_their_layout(tmp_path):
    """That library's DVoRA fails on GPT-2's Conv1D ``c_fc`` (its norm reads the stored (d_in, d_out) weight)."""
    model, inputs, _ = load_golden("gpt2_vera", "eager")
    model.add_adapter("d", "vera[r=5,lambda_form=matrix,targets=[ffn_in],use_dora=true]", set_active=True)
    hidden(model, **inputs)  # ours runs it
    with pytest.raises(ConfigError, match="Conv1D"):
        model.save_adapter(tmp_path / "theirs", "d", layout="adapters")


# every fixture: its attention implementation and that library's tolerance when it loads what we wrote (DVoRA's
# normalisation sums in another order: 1e-4)
VARIANTS = {**{c: (a, 1e-5) for c, a in GATED.items()}, **{c: (a, 1e-4) for c, a in DORA.items()}}


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_written_in_their_layout(tmp_path, case):
    model, inputs, expected = load_golden(case, VARIANTS[case][0])
    check_written_in_their_layout(model, case, tmp_path / "theirs", expected)
    _check_reads_back_in_both_layouts(model, tmp_path, inputs, expected)


@needs_adapters_venv
@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_the_adapters_library_loads_what_we_wrote(tmp_path, case):
    attention, tolerance = VARIANTS[case]
    model, _, _ = load_golden(case, attention)
    name = model.load_adapter(FIXTURES / case / "adapter")
    model.save_adapter(tmp_path / "theirs", name, layout="adapters")
    check_adapters_library_loads(
        case, tmp_path / "theirs", attention, adapter_model=True, tolerance=tolerance
    )
