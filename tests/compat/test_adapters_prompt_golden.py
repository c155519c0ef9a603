"""Prompt tuning saved by the `adapters` library (1.3.0) loads into ours with the same last hidden states (all
P + T positions, as that library returns them), and is written back in its layout. The fixture was made with eager
attention: under sdpa that library lets the prompt positions of a padded row attend to its padding (docs/methods.md)."""

import pytest
import torch
import transformers

from golden import (
    FIXTURES,
    check_adapters_library_loads,
    check_written_in_their_layout,
    hidden,
    load_golden,
    needs_adapters_venv,
)

CASE = "bert_prompt_tuning"
pytestmark = pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) < 5,
    reason="prompt tuning needs transformers >= 5 (refusal: tests/methods/test_versions.py)",
)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_their_prompt_loads_with_the_same_outputs(attn):
    model, inputs, expected = load_golden(CASE, attn)
    name = model.load_adapter(FIXTURES / CASE / "adapter", set_active=True)
    assert model.adapters[name].method == "prompt_tuning"
    want = torch.tensor(expected["last_hidden_state"])
    out = hidden(model, **inputs)
    assert out.shape == want.shape == (3, 4 + 7, 32)  # the prompt positions in front, as theirs
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        hidden(model, input_ids=inputs["input_ids"]),
        torch.tensor(expected["last_hidden_state_no_attention_mask"]),
        atol=1e-5,
        rtol=0,
    )
    model.set_active_adapters(None)
    without = torch.tensor(expected["last_hidden_state_without_adapter"])
    torch.testing.assert_close(hidden(model, **inputs), without, atol=1e-5, rtol=0)


def test_written_in_their_layout(tmp_path):
    model, _, expected = load_golden(CASE, "eager")
    check_written_in_their_layout(model, CASE, tmp_path / "theirs", expected)


@needs_adapters_venv
def test_the_adapters_library_loads_what_we_write(tmp_path):
    model, _, _ = load_golden(CASE, "eager")
    name = model.load_adapter(FIXTURES / CASE / "adapter")
    model.save_adapter(tmp_path / "theirs", name, layout="adapters")
    check_adapters_library_loads(CASE, tmp_path / "theirs", "eager")
