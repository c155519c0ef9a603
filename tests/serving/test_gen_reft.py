"""ReFT in the continuous-batching generation engine (tiny random Llama and GPT-2, float32): ReFT rows mixed with
LoRA, a Stack of LoRA and ReFT, and base rows, arriving at different steps (whole prompts, prompts in chunks, and
preempted sequences recomputed), give every request the tokens ``model.generate`` (greedy, key/value cache) gives
it alone under its adapter, in padded rows and packed (every sequence in one row, positions per token sliced along
the row's Split): positions from each sequence's own prompt (prefix at the sequence's first tokens, also a prompt
shorter than the prefix; suffix at the prompt's end). A Split of ReFT adapters over a packed row given positions per
token equals a separate pass per sequence. What cannot run raises at submit: a prompt shorter than suffix_positions
with prefix positions."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.methods.point_inputs import CallPositions
from adapterhub.runtime import callstate
from adapterhub.runtime.packing import PackedRow
from adapterhub.serving import GenerationEngine
from adapterhub.spec.composition import Stack
from tiny_models import build, perturb

NEW = 6
LENGTHS = (5, 9, 3, 7, 4, 8, 6, 2)
REFTS = {
    "pre": "loreft[prefix_positions=3,r=2]",  # prefix only (the presets' shape); the 3- and 2-token prompts are shorter
    "both": "loreft[prefix_positions=1,suffix_positions=2,r=2]",
    "tied": "direft[prefix_positions=2,suffix_positions=2,r=2,tied_weights=true]",
}
# (prompt index, adapter) in arrival order; "lora+both": Stack("lora", "both")
PLAN = [
    (0, "pre"),
    (1, "both"),
    (2, None),
    (3, "lora"),
    (4, "tied"),
    (5, "lora+both"),
    (6, "both"),
    (7, "pre"),
]


def _setup(name: str | None) -> Any:
    return Stack("lora", "both") if name == "lora+both" else name


def _noisy(module: torch.nn.Module, seed: int) -> None:
    """Move a ReFT adapter far from its start, leaving orthogonal projections orthonormal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "parametrizations" not in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request: Any) -> Any:
    model = build(request.param, "causal_lm", seed=0)
    adapterhub.init(model)
    for i, (name, config) in enumerate(REFTS.items()):
        model.add_adapter(name, config)
        _noisy(model._store.adapters[name], seed=30 + i)
    model.add_adapter("lora", "lora")
    perturb(model._store.adapters["lora"], std=0.2, seed=3)
    return model


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in LENGTHS]


def reference(model: Any, prompt: list[int], adapter: str | None) -> list[int]:
    with torch.no_grad(), model.adapter_setup(_setup(adapter)):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


def run_staggered(engine: GenerationEngine, prompts: list[list[int]]) -> list[list[int]]:
    """Submit two requests of ``PLAN`` per step while the others decode; step until all end."""
    handles: list[Any] = []
    while len(handles) < len(PLAN) or any(h.status != "finished" for h in handles):
        for _ in range(2):
            if len(handles) < len(PLAN):
                index, adapter = PLAN[len(handles)]
                handles.append(
                    engine.submit(prompts[index], adapter=_setup(adapter), max_new_tokens=NEW, stop_ids=())
                )
        engine.step()
    return [h.result() for h in handles]


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
@pytest.mark.parametrize(
    "options",
    [{}, {"prefill_chunk": 2}, {"preempt": True, "cache_block": 2, "max_cache_tokens": 30}],
    ids=["whole", "chunked", "preempted"],
)
def test_reft_rows_mixed_with_lora_and_base_equal_generate_alone(model, prompts, options, packed):
    want = [reference(model, prompts[i], adapter) for i, adapter in PLAN]
    for name in REFTS:  # every ReFT adapter changes some completion
        assert any(
            want[k] != reference(model, prompts[i], None) for k, (i, a) in enumerate(PLAN) if a == name
        )
    engine = GenerationEngine(model, max_num_seqs=8, packed=packed, **options)
    assert run_staggered(engine, prompts) == want
    if options.get("preempt"):
        assert engine.stats()["preempted"] > 0


def test_a_split_of_reft_adapters_over_a_packed_row_equals_separate_passes(model, prompts):
    """Segments of one row (1, T) under Split("pre", "both", None, Stack("lora", "both"), "tied"), positions per
    token given: each segment's logits are its prompt's alone under its adapter (no positions given: counted from
    the call)."""
    setups = ["pre", "both", None, "lora+both", "tied", "both"]
    chosen = [prompts[i] for i in (0, 1, 2, 5, 4, 6)]
    row = PackedRow([_setup(a) for a in setups], [len(p) for p in chosen])
    rank = torch.cat([torch.arange(len(p)) for p in chosen])[None]  # (1, T)
    prompt = torch.cat([torch.full((len(p),), len(p)) for p in chosen])[None]  # (1, T)
    ids = torch.tensor([[t for p in chosen for t in p]])  # (1, T)
    with (
        torch.no_grad(),
        model.adapter_setup(row.setup),
        callstate.given_positions(model._store, CallPositions(None, 0, rank, prompt)),
    ):
        packed = model(
            input_ids=ids, attention_mask=row.attention_mask(torch.float32), position_ids=row.position_ids()
        ).logits[0]  # (T, V)
    for start, p, adapter in zip(row.starts, chosen, setups, strict=True):
        with torch.no_grad(), model.adapter_setup(_setup(adapter)):
            alone = model(input_ids=torch.tensor([p])).logits[0]  # (n, V)
        torch.testing.assert_close(packed[start : start + len(p)], alone, atol=1e-5, rtol=1e-5)
        if adapter in REFTS:  # the adapter changed this segment
            with torch.no_grad(), model.adapter_setup(None):
                assert not torch.allclose(model(input_ids=torch.tensor([p])).logits[0], alone, atol=1e-3)


def test_a_prompt_shorter_than_the_suffix_with_a_prefix_is_refused_at_submit(model, prompts):
    engine = GenerationEngine(model)
    with pytest.raises(ConfigError, match=r"prompt of 1 tokens.*model.generate\(\)"):
        engine.submit(prompts[7][:1], adapter="both", max_new_tokens=NEW)
    with pytest.raises(ConfigError, match="prompt of 1 tokens"):
        engine.submit(prompts[7][:1], adapter=Stack("lora", "both"), max_new_tokens=NEW)
    assert (
        len(engine.submit(prompts[7], adapter="both", max_new_tokens=NEW).result()) == NEW
    )  # 2 tokens: fine
