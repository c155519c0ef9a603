"""The reference systems of bench/serve/gen_engine_bench.py on a tiny random Llama (no SmolLM2): peft holding our
LoRA weights computes our function, each baseline produces the tokens our model's ``generate`` does, bottleneck
adapters are seeded to change outputs, and the ratio lines come from the records."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import adapterhub
from tiny_models import build

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serve"
sys.path.insert(0, str(BENCH))

import gen_engine_baselines as baselines  # noqa: E402
from gen_engine_bench import add_loras, parse_systems, run_engine_steady  # noqa: E402

PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16], [17, 18]]
NEW = 5


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module, list[str]]:
    """(our model with 3 LoRAs, an untouched copy of its base)."""
    model = build("llama", "causal_lm", seed=0)
    base = copy.deepcopy(model)
    adapterhub.init(model)
    names = add_loras(model, 3)
    return model, base, names


def greedy(model: torch.nn.Module, prompt: list[int], new: int = NEW) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
        )
    return out[0, len(prompt) :].tolist()


def test_peft_copy_computes_our_lora_function(models) -> None:
    model, base, names = models
    peft_model = baselines.peft_copy(copy.deepcopy(base), model, names)
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        with model.adapter_setup(None):
            plain = model(ids).logits
        for name in names:
            peft_model.set_adapter(name)
            with model.adapter_setup(name):
                ours = model(ids).logits  # (1, 5, vocab)
            theirs = peft_model(input_ids=ids).logits
            assert not torch.allclose(ours, plain, atol=1e-4)  # the adapter changes the outputs
            torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_peft_one_at_a_time_gives_our_tokens_per_adapter(models) -> None:
    model, base, names = models
    peft_model = baselines.peft_copy(copy.deepcopy(base), model, names)
    adapters = [names[i % len(names)] for i in range(len(PROMPTS))]
    got = baselines.peft_one_at_a_time(peft_model, PROMPTS, adapters, NEW, pad=0)
    expected = []
    for prompt, adapter in zip(PROMPTS, adapters):
        with model.adapter_setup(adapter):
            expected.append(greedy(model, prompt))
    assert got == expected


def test_peft_copy_refuses_a_lora_it_cannot_map(models) -> None:
    model, base, _ = models
    model.add_adapter("lora_mlp", "lora[targets=[ffn_in]]")
    try:
        with pytest.raises(ValueError, match="plain LoRAs"):
            baselines.peft_copy(copy.deepcopy(base), model, ["lora_mlp"])
    finally:
        model.delete_adapter("lora_mlp")


def test_padded_per_group_runs_each_group_under_its_adapter(models) -> None:
    model, _, names = models
    adapters = [names[0], None, names[0], names[1]]
    got = baselines.padded_per_group(model, PROMPTS, adapters, NEW, pad=0)
    expected = []
    for prompt, adapter in zip(PROMPTS, adapters):
        with model.adapter_setup(adapter):
            expected.append(greedy(model, prompt))
    assert got == expected
    assert got[0] != got[1] or PROMPTS[0] != PROMPTS[1]
    assert all(len(tokens) == NEW for tokens in got)


def test_generate_batch_gives_the_base_tokens_on_our_model(models) -> None:
    model, base, _ = models  # our LoRAs loaded, none active: the base function
    attention = model.config._attn_implementation
    got = baselines.generate_batch_tokens(model, PROMPTS, NEW, pad=0)
    assert got == [greedy(base, p) for p in PROMPTS]
    assert model.config._attn_implementation == attention


def test_cb_config_holds_every_prompt_and_its_new_tokens() -> None:
    config = baselines.cb_config([[1] * 250, [1] * 3], 10)
    # 260 tokens take 2 pages of 256, 13 tokens 1; one spare page per request
    assert config.num_blocks == 3 + 2
    assert config.max_requests_per_batch == 2


def test_add_bottlenecks_seeds_up_projections_so_outputs_change() -> None:
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    names = baselines.add_bottlenecks(model, 2)
    assert names == ["pfeiffer0", "pfeiffer1"]
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        with model.adapter_setup(None):
            plain = model(ids).logits
        outs = []
        for name in names:
            with model.adapter_setup(name):
                outs.append(model(ids).logits)
    assert not torch.allclose(outs[0], plain, atol=1e-4)
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)


def test_ratio_lines_from_records() -> None:
    records = {
        "padded_batch": {"tokens_per_s": 100.0},
        "engine_staggered_packed": {"tokens_per_s": 95.0},
        "engine_steady_packed": {"tokens_per_s": 88.0},
        "engine_1_lora_packed": {"tokens_per_s": 80.0},
        "engine_mixed_lora_packed": {"tokens_per_s": 60.0},
        "engine_together": {"tokens_per_s": 120.0},
        "generate_batch": {"error": "RuntimeError: boom"},
        "peft_one_at_a_time": {"tokens_per_s": 20.0},
    }
    lines = baselines.ratio_lines(records)
    assert lines == [
        "engine_staggered_packed / padded_batch: 0.95x (target >= 0.9x: met)",
        "engine_steady_packed / padded_batch: 0.88x (target >= 0.9x: NOT met)",
        "engine_mixed_lora_packed / engine_1_lora_packed: 0.75x (target >= 0.9x: NOT met)",
        "engine_mixed_pfeiffer_packed / engine_1_pfeiffer_packed: n/a (not measured: "
        "engine_mixed_pfeiffer_packed; engine_1_pfeiffer_packed)",
        "engine_together / generate_batch: n/a (not measured: generate_batch RuntimeError: boom)",
        "engine_mixed_lora_packed / peft_one_at_a_time: 3.00x",
        "engine_mixed_lora_packed / padded_per_group: n/a (not measured: padded_per_group)",
    ]


def test_parse_systems_keeps_order_and_names_the_valid_ones() -> None:
    known = ["a", "b", "c"]
    assert parse_systems(None, known) == known
    assert parse_systems("c,a", known) == ["c", "a"]
    assert parse_systems("b, b,a", known) == ["b", "a"]
    with pytest.raises(SystemExit, match="valid: a, b, c"):
        parse_systems("a,z", known)


def test_steady_window_counts_only_steps_with_every_stream_in(models) -> None:
    """Stream ``i`` joins at step ``i``; requests follow back to back, so every stream is in from step ``n - 1``
    until stream 0's last request ends at step ``rounds * new - 1``: ``rounds * new - n + 1`` steps of ``n`` new
    tokens each (ramp up and down left out)."""
    model, _, _ = models
    n, rounds = len(PROMPTS), 3
    tokens, seconds = run_engine_steady(model, PROMPTS, NEW, rounds, packed=True)
    assert tokens == n * (rounds * NEW - n + 1)
    assert seconds > 0
    with pytest.raises(ValueError, match="--rounds must be at least 2"):
        run_engine_steady(model, PROMPTS, NEW, 1, packed=True)
