"""Prefix tuning per row in the generation engine (tiny random Llama, float32): prefix adapters of different
lengths (MLP and flat forms) mixed with LoRA, DoRA, a bottleneck adapter and base rows in one staggered batch, a
``Stack`` of a prefix and a LoRA on one row, and with chunked prefill and preemption, each completion equals
``model.generate`` greedy with that adapter alone (the prefix keys/values are prepended inside attention at every
step, never cached, so recomputing a preempted row needs nothing more)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.serving import GenerationEngine
from adapterhub.spec.composition import Stack
from tiny_models import build, perturb

NEW = 8
LENGTHS = (3, 8, 5, 11, 4, 6, 9, 7)
ADAPTERS: list[Any] = ["p5", None, "lora", "q3", "dora", "p5", "pfeiffer", Stack("q3", "lora")]


@pytest.fixture(scope="module")
def llama() -> Any:
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    for i, (name, method, std) in enumerate(
        [
            ("p5", "prefix_tuning[prefix_length=5]", 0.5),
            ("q3", "prefix_tuning[prefix_length=3,flat=True]", 0.5),
            ("lora", "lora", 0.2),
            ("dora", "dora", 0.2),
            ("pfeiffer", "pfeiffer", 0.05),
        ]
    ):
        model.add_adapter(name, method)
        perturb(model._store.adapters[name], std=std, seed=30 + i)
    return model


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(9)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in LENGTHS]


def reference(model: Any, prompt: list[int], adapter: Any) -> list[int]:
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


def run_staggered(engine: GenerationEngine, prompts: list[list[int]]) -> list[list[int]]:
    handles: list[Any] = []
    while len(handles) < len(prompts) or any(h.status != "finished" for h in handles):
        if len(handles) < len(prompts):
            i = len(handles)
            handles.append(engine.submit(prompts[i], adapter=ADAPTERS[i], max_new_tokens=NEW))
        engine.step()
    return [h.result() for h in handles]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"prefill_chunk": 3, "max_batch_tokens": 12},
        {"preempt": True, "max_cache_tokens": 40, "cache_block": 4},
    ],
    ids=["plain", "chunked", "preempted"],
)
def test_prefix_rows_mixed_with_other_methods_equal_generate_alone(llama, prompts, options):
    for prompt, adapter in zip(prompts, ADAPTERS, strict=True):
        if adapter is not None:  # every adapter changes its completion
            assert reference(llama, prompt, adapter) != reference(llama, prompt, None), adapter
    engine = GenerationEngine(llama, max_num_seqs=8, stop_ids=[], **options)
    outputs = run_staggered(engine, prompts)
    for ids, prompt, adapter in zip(outputs, prompts, ADAPTERS, strict=True):
        assert ids == reference(llama, prompt, adapter), adapter
    if options.get("preempt"):
        assert engine.stats()["preempted"] > 0


@pytest.fixture(scope="module")
def prompted() -> Any:
    """A Llama with two prompt-tuning adapters (different lengths), a prefix, a LoRA and a DoRA."""
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    for i, (name, method, std) in enumerate(
        [
            ("pt4", "prompt_tuning[prompt_length=4]", 1.0),
            ("pt7", "prompt_tuning[prompt_length=7]", 1.0),
            ("p5", "prefix_tuning[prefix_length=5]", 0.5),
            ("lora", "lora", 0.2),
            ("dora", "dora", 0.2),
        ]
    ):
        model.add_adapter(name, method)
        perturb(model._store.adapters[name], std=std, seed=40 + i)
    return model


PROMPTED: list[Any] = ["pt4", None, "lora", "pt7", "p5", "pt4", "dora", "pt7"]


def prompt_reference(model: Any, prompt: list[int], adapter: Any) -> list[int]:
    """``generate`` with the adapter alone; without a cache (prompt tuning's hooks refuse one)."""
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None,
            use_cache=adapter not in ("pt4", "pt7"),
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"prefill_chunk": 3, "max_batch_tokens": 12},
        {"preempt": True, "max_cache_tokens": 32, "cache_block": 4},
    ],
    ids=["plain", "chunked", "preempted"],
)
def test_prompt_tuning_rows_mixed_with_other_methods_equal_generate_alone(prompted, prompts, options):
    for name in ("pt4", "pt7"):  # the soft prompts change the completions
        assert any(
            prompt_reference(prompted, p, name) != prompt_reference(prompted, p, None) for p in prompts
        )
    engine = GenerationEngine(prompted, max_num_seqs=8, stop_ids=[], **options)
    handles: list[Any] = []
    while len(handles) < len(prompts) or any(h.status != "finished" for h in handles):
        if len(handles) < len(prompts):
            i = len(handles)
            handles.append(engine.submit(prompts[i], adapter=PROMPTED[i], max_new_tokens=NEW))
        engine.step()
    for handle, prompt, adapter in zip(handles, prompts, PROMPTED, strict=True):
        assert handle.result() == prompt_reference(prompted, prompt, adapter), adapter
    if options.get("preempt"):
        assert engine.stats()["preempted"] > 0


def test_prompt_tuning_in_a_composition_is_refused_at_submit(prompted, prompts):
    engine = GenerationEngine(prompted)
    with pytest.raises(ConfigError, match="runs it alone on its rows"):
        engine.submit(prompts[0], adapter=Stack("pt4", "lora"))
    assert engine.stats()["waiting"] == 0
