"""The `adapters` library's (IA)³ (its IA3Config: LoRA with composition_mode="scale") both ways.

Golden fixtures (scripts/compat/make_adapters_fixtures.py --group ia3, perturbed vectors, alpha=2): ours gives their
last_hidden_state within 1e-4; what we write in their layout reads back equal, and that library (in
.venv-adapters, skipped when absent) loads it and reproduces our outputs."""

import json

import pytest
import torch

from adapterhub.errors import ConfigError
from golden import ADAPTERS_PYTHON, FIXTURES, load_golden, run_in_adapters_venv

CASES = ["bert_ia3", "gpt2_ia3", "llama_ia3"]
# their fused GPT-2 c_attn pads q's block with ones *before* multiplying by alpha (2): q is scaled by 2 there
TARGETS = {
    "bert_ia3": ["k", "v", "ffn_in"],
    "gpt2_ia3": ["q", "k", "v", "ffn_in"],
    "llama_ia3": ["k", "v", "ffn_out"],
}

THEIR_SIDE = """
import json, sys, torch, transformers, adapters
case, out = sys.argv[1], sys.argv[2]
expected = json.load(open(f"{out}/expected.json"))
model = transformers.AutoModel.from_pretrained(f"{case}/base", attn_implementation="eager").eval()
adapters.init(model)
name = model.load_adapter(f"{out}/theirs")
model.set_active_adapters(name)
with torch.no_grad():
    hidden = model(input_ids=torch.tensor(expected["input_ids"]),
                   attention_mask=torch.tensor(expected["attention_mask"])).last_hidden_state
diff = (hidden - torch.tensor(expected["ours"])).abs().max().item()
print("max diff", diff)
sys.exit(0 if diff < 1e-4 else 1)
"""


@pytest.mark.parametrize("case", CASES)
def test_their_ia3_matches_and_round_trips(case, tmp_path):
    model, inputs, expected = load_golden(case, "eager")
    name = model.load_adapter(FIXTURES / case / "adapter", set_active=True)
    adapter = model.adapters[name]
    assert adapter.method == "ia3"
    assert list(adapter.targets) == TARGETS[case] and list(adapter.input_targets) == []
    with torch.no_grad():
        ours = model(**inputs).last_hidden_state
    torch.testing.assert_close(ours, torch.tensor(expected["last_hidden_state"]), atol=1e-4, rtol=0)
    model.save_adapter(tmp_path / "theirs", name, layout="adapters", with_head=False)
    written = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())["config"]
    for key in ("architecture", "composition_mode", "r", "attn_matrices", "intermediate_lora", "output_lora"):
        if not (key == "attn_matrices" and case == "gpt2_ia3"):
            assert written[key] == expected["config"][key], key
    model.save_adapter(tmp_path / "ours", name, with_head=False)
    for layout in ("theirs", "ours"):
        fresh, _, _ = load_golden(case, "eager")
        fresh.load_adapter(tmp_path / layout, set_active=True)
        with torch.no_grad():
            torch.testing.assert_close(fresh(**inputs).last_hidden_state, ours, atol=1e-6, rtol=0)
    if ADAPTERS_PYTHON.exists():
        (tmp_path / "expected.json").write_text(
            json.dumps({k: v.tolist() for k, v in inputs.items()} | {"ours": ours.tolist()})
        )
        run_in_adapters_venv(THEIR_SIDE, str(FIXTURES / case), str(tmp_path), timeout=600)


def test_input_scaling_is_refused_in_their_layout(tmp_path):
    model, _, _ = load_golden("bert_ia3", "eager")
    model.add_adapter("paper", config="ia3")  # input_targets=[ffn_out]: no form in that library
    with pytest.raises(ConfigError, match="input_targets"):
        model.save_adapter(tmp_path / "x", "paper", layout="adapters", with_head=False)
