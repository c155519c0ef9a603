"""Prompt tuning saved by the `adapters` library (1.3.0) loads into ours with the same last hidden states (all
P + T positions, as that library returns them), and is written back in its layout. The fixture was made with eager
attention: under sdpa that library lets the prompt positions of a padded row attend to its padding (docs/methods.md)."""

import json

import pytest
import torch
import transformers

from golden import FIXTURES, hidden, load_golden, needs_adapters_venv, run_in_adapters_venv

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
    name = model.load_adapter(FIXTURES / CASE / "adapter")
    model.save_adapter(tmp_path / "theirs", name, layout="adapters")
    theirs = torch.load(tmp_path / "theirs" / "pytorch_adapter.bin", weights_only=True)
    original = torch.load(FIXTURES / CASE / "adapter" / "pytorch_adapter.bin", weights_only=True)
    assert sorted(theirs) == sorted(original)
    assert all(torch.equal(theirs[k], original[k]) for k in original)
    written = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert written["config"] == expected["config"]


THEIR_LOAD = """
import json, sys, torch, adapters, transformers
fixture, directory = sys.argv[1:]
expected = json.loads(open(fixture + "/expected.json").read())
model = transformers.AutoModel.from_pretrained(fixture + "/base", attn_implementation="eager").eval()
adapters.init(model)
model.set_active_adapters(model.load_adapter(directory))
with torch.no_grad():
    out = model(input_ids=torch.tensor(expected["input_ids"]),
                attention_mask=torch.tensor(expected["attention_mask"])).last_hidden_state
diff = (out - torch.tensor(expected["last_hidden_state"])).abs().max().item()
print(diff)
sys.exit(0 if diff < 1e-5 else 1)
"""


@needs_adapters_venv
def test_the_adapters_library_loads_what_we_write(tmp_path):
    model, _, _ = load_golden(CASE, "eager")
    name = model.load_adapter(FIXTURES / CASE / "adapter")
    model.save_adapter(tmp_path / "theirs", name, layout="adapters")
    run_in_adapters_venv(THEIR_LOAD, str(FIXTURES / CASE), str(tmp_path / "theirs"))
