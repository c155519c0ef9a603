"""MAD-X invertible adapters (``SeqBnInvConfig``) saved by the `adapters` library (1.3.0) load into ours with the
same last hidden states (to float rounding: the fixtures were computed by transformers 4.57 on another CPU, whose
kernels may sum in another order), and are written back in its layout key for key."""

import torch

from golden import (
    FIXTURES,
    check_adapters_library_loads,
    check_written_in_their_layout,
    hidden,
    load_golden,
    needs_adapters_venv,
)

CASE = "bert_seq_bn_inv"


def _same(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=1e-5, rtol=0)


def test_their_invertible_adapter_loads_with_identical_outputs():
    model, inputs, expected = load_golden(CASE)
    name = model.load_adapter(FIXTURES / CASE / "adapter", set_active=True)
    assert model.adapters[name].method == "bottleneck_inv"
    _same(hidden(model, **inputs), expected["last_hidden_state"])
    _same(hidden(model, input_ids=inputs["input_ids"]), expected["last_hidden_state_no_attention_mask"])
    model.set_active_adapters(None)
    _same(hidden(model, **inputs), expected["last_hidden_state_without_adapter"])


def test_written_in_their_layout_key_for_key(tmp_path):
    model, inputs, expected = load_golden(CASE)
    check_written_in_their_layout(model, CASE, tmp_path / "theirs", expected)
    fresh, _, _ = load_golden(CASE)
    fresh.load_adapter(tmp_path / "theirs", set_active=True)
    _same(hidden(fresh, **inputs), expected["last_hidden_state"])


@needs_adapters_venv
def test_the_adapters_library_loads_what_we_write(tmp_path):
    model, _, _ = load_golden(CASE)
    name = model.load_adapter(FIXTURES / CASE / "adapter")
    model.save_adapter(tmp_path / "theirs", name, layout="adapters")
    check_adapters_library_loads(CASE, tmp_path / "theirs")
