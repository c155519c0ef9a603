"""The generation engine with ``packed=True`` (``serving/gen_packed``): every step is ONE row holding every
sequence's fed tokens, with per-token adapter segments and block-diagonal attention. On a tiny random Llama
(float32): the prefill writes the keys/values of each prompt's own forward; staggered, mixed batches (LoRA, DoRA,
(IA)³, bottleneck, Stack, Average, prompt tuning and base rows; chunked; preempted; seeded sampling) give the tokens of
``model.generate`` with each adapter alone and of the unpacked engine; one forward per step; prefix tuning is
refused at submit with its reason."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.serving import GenerationEngine
from adapterhub.spec.composition import Average, Split, Stack
from tiny_models import DECODERS, build, perturb

NEW = 7
LENGTHS = (3, 8, 5, 11, 4, 6, 9, 7, 5)
ADAPTERS: list[Any] = [
    "lora", None, "dora", "ia3", "lora", "pfeiffer", Stack("lora", "pfeiffer"), "pt4", Average("lora", "ia3"),
]  # fmt: skip


@pytest.fixture(scope="module")
def model() -> Any:
    llama = build("llama", "causal_lm", seed=0)
    adapterhub.init(llama)
    for i, (name, method, std) in enumerate(
        [
            ("lora", "lora", 0.2),
            ("dora", "dora", 0.2),
            ("ia3", "ia3", 0.3),
            ("pfeiffer", "pfeiffer", 0.05),
            ("pt4", "prompt_tuning[prompt_length=4]", 1.0),
            ("p5", "prefix_tuning[prefix_length=5]", 0.5),
        ]
    ):
        llama.add_adapter(name, method)
        perturb(llama._store.adapters[name], std=std, seed=60 + i)
    return llama


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in LENGTHS]


def reference(model: Any, prompt: list[int], adapter: Any) -> list[int]:
    """``generate`` greedy with the adapter alone (prompt tuning's hooks refuse a cache: without one)."""
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None,
            use_cache=adapter != "pt4",
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def run_staggered(engine: GenerationEngine, prompts: list[list[int]], **sampled: Any) -> list[list[int]]:
    """One request joins at each step (row 4 sampled with ``sampled`` when given) while the others decode."""
    handles: list[Any] = []
    while len(handles) < len(prompts) or any(h.status != "finished" for h in handles):
        if len(handles) < len(prompts):
            i = len(handles)
            kw = sampled if i == 4 else {}
            handles.append(engine.submit(prompts[i], adapter=ADAPTERS[i], max_new_tokens=NEW, **kw))
        engine.step()
    return [h.result() for h in handles]


def test_packed_prefill_writes_each_prompts_own_keys_and_values(model, prompts):
    engine = GenerationEngine(model, packed=True, stop_ids=[])
    chosen = [0, 1, 2, 5]  # LoRA, base, DoRA, bottleneck
    handles = [engine.submit(prompts[i], adapter=ADAPTERS[i], max_new_tokens=NEW) for i in chosen]
    info = engine.step()
    assert info is not None and info.prefill == 4 and info.new_tokens == sum(LENGTHS[i] for i in chosen)
    assert isinstance(info.setup, Split)
    for handle, i in zip(handles, chosen, strict=True):
        with torch.no_grad(), model.adapter_setup(ADAPTERS[i]):
            own = model(torch.tensor([prompts[i]]), use_cache=True)
        kv = handle._seq.kv
        assert kv.length == LENGTHS[i]
        for layer, cached in enumerate(own.past_key_values.layers):
            torch.testing.assert_close(kv.keys[layer][:, : kv.length], cached.keys[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(kv.values[layer][:, : kv.length], cached.values[0], atol=1e-5, rtol=0)
        assert handle._seq.tokens[0] == int(own.logits[0, -1].argmax())
    engine.close()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"prefill_chunk": 3, "max_batch_tokens": 12},
        {"preempt": True, "max_cache_tokens": 28, "cache_block": 4, "prefill_chunk": 4},
    ],
    ids=["plain", "chunked", "preempted"],
)
def test_staggered_mixed_batch_packed_equals_generate_alone_and_unpacked(model, prompts, options):
    for adapter in ADAPTERS:  # every adapter (but the soft prompt: use_cache differs) changes some completion
        if adapter not in (None, "pt4"):
            assert any(reference(model, p, adapter) != reference(model, p, None) for p in prompts), adapter
    packed = GenerationEngine(model, max_num_seqs=8, stop_ids=[], packed=True, **options)
    outputs = run_staggered(packed, prompts)
    for ids, prompt, adapter in zip(outputs, prompts, ADAPTERS, strict=True):
        assert ids == reference(model, prompt, adapter), adapter
    if options.get("preempt"):
        assert packed.stats()["preempted"] > 0
    sampled = {"temperature": 0.8, "top_k": 20, "seed": 3}
    rows = GenerationEngine(model, max_num_seqs=8, stop_ids=[], **options)
    packed = GenerationEngine(model, max_num_seqs=8, stop_ids=[], packed=True, **options)
    assert run_staggered(packed, prompts, **sampled) == run_staggered(rows, prompts, **sampled)


def test_one_forward_per_step_with_one_row(model, prompts):
    shapes: list[tuple[int, ...]] = []

    def record(module: Any, args: Any, kwargs: Any) -> None:
        fed = kwargs.get("input_ids")
        shapes.append(tuple((fed if fed is not None else kwargs["inputs_embeds"]).shape[:2]))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        engine = GenerationEngine(model, max_num_seqs=8, packed=True, stop_ids=[])
        first = [engine.submit(prompts[i], adapter=ADAPTERS[i], max_new_tokens=NEW) for i in (0, 1, 2)]
        infos = []
        for step in range(NEW):
            if step == 2:  # joins mid-decode: its prompt in the same row as the others' decode tokens
                late = engine.submit(prompts[3], adapter="ia3", max_new_tokens=NEW)
            before = len(shapes)
            infos.append(engine.step())
            assert len(shapes) == before + 1
        assert shapes[0] == (1, LENGTHS[0] + LENGTHS[1] + LENGTHS[2])
        assert shapes[2] == (1, 3 + LENGTHS[3]) and shapes[3] == (1, 4)
        assert infos[2].prefill == 1 and infos[2].decode == 3
        assert infos[2].setup == Split("lora", "dora", "ia3", None, split_index=[1, 2, 2 + LENGTHS[3]])
        while engine.step() is not None:
            pass
        assert len(shapes) == NEW + 2
    finally:
        hook.remove()
    for handle, i in zip([*first, late], (0, 1, 2, 3), strict=True):
        assert handle.result() == reference(model, prompts[i], "ia3" if i == 3 else ADAPTERS[i])


def test_prefix_tuning_is_refused_in_packed_mode_with_its_reason(model, prompts):
    engine = GenerationEngine(model, packed=True)
    with pytest.raises(ConfigError, match=r"'p5' \(prefix_tuning\).*prefix keys and values are prepended"):
        engine.submit(prompts[0], adapter="p5")
    with pytest.raises(ConfigError, match="prefix_tuning"):
        engine.submit(prompts[0], adapter=Stack("p5", "lora"))
    GenerationEngine(model).submit(prompts[0], adapter="p5")  # unpacked, it runs per row
    with pytest.raises(ConfigError, match="packed must be True, False or None"):
        GenerationEngine(model, packed="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", [a for a in DECODERS if a != "llama"])
def test_decoder_architectures_packed_equal_generate(arch):
    """Absolute positions (GPT-2, from position_ids) and rotary ones, grouped-query attention, fused projections,
    eager attention with soft-capping and sliding windows (Gemma 2/3, window 24: requests within 12 tokens)."""
    window = {"sliding_window": 24} if arch in ("gemma2", "gemma3_text") else {}
    llama = build(arch, "causal_lm", **window)
    adapterhub.init(llama)
    llama.add_adapter("bottleneck", "pfeiffer")
    perturb(llama._store.adapters["bottleneck"], std=0.05, seed=4)
    names: list[Any] = [None, "bottleneck"]
    generator = torch.Generator().manual_seed(0)
    batch = [torch.randint(3, 99, (n,), generator=generator).tolist() for n in (3, 5, 4, 2)]
    adapters = [names[i % 2] for i in range(len(batch))]
    engine = GenerationEngine(llama, packed=True, stop_ids=[])
    handles = []
    for prompt, adapter in zip(batch, adapters, strict=True):
        handles.append(engine.submit(prompt, adapter=adapter, max_new_tokens=4))
        engine.step()
    for handle, prompt, adapter in zip(handles, batch, adapters, strict=True):
        with torch.no_grad(), llama.adapter_setup(adapter):
            out = llama.generate(
                torch.tensor([prompt]), max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None
            )
        assert handle.result() == out[0, len(prompt) :].tolist(), adapter


def test_a_sequences_own_head_reads_its_last_token_in_the_packed_row(prompts):
    llama = build("llama", "causal_lm", seed=0)
    adapterhub.init(llama)
    llama.add_adapter("lora", "lora")
    perturb(llama._store.adapters["lora"], std=0.2, seed=1)
    llama.add_causal_lm_head("own", tie_weights=False)
    perturb(llama.heads["own"], std=0.5, seed=6)
    head = llama.heads["own"]

    def run(engine: GenerationEngine) -> list[list[int]]:
        handles = [
            engine.submit(
                p, adapter="lora" if i % 2 else None, max_new_tokens=5, head=head if i < 2 else None
            )
            for i, p in enumerate(prompts[:4])
        ]
        return [h.result() for h in handles]

    packed = run(GenerationEngine(llama, packed=True, stop_ids=[]))
    assert packed == run(GenerationEngine(llama, stop_ids=[]))
    plain = [GenerationEngine(llama, stop_ids=[]).submit(p, max_new_tokens=5).result() for p in prompts[:2]]
    assert packed[0] != plain[0] or packed[1] != plain[1]  # the head matters


def test_serve_model_packed_flag_reaches_the_engine_and_keeps_the_texts(tiny_gpt2_dir):
    """``serve-model`` (packed where supported, the default), ``--packed`` and ``--no-packed``: concurrent
    ``/v1/completions`` through the HTTP app return the same texts (GPT-2, a LoRA adapter with its causal-LM
    head)."""
    import asyncio

    import httpx

    from adapterhub.cli import build_parser
    from adapterhub.serving.app import create_app
    from adapterhub.serving.cli import config_from_args
    from adapterhub.serving.engine import EngineConfig, ServingEngine

    directory, adapter = tiny_gpt2_dir
    argv = ["serve-model", "--model", str(directory), "--adapter", f"lm={adapter}"]
    assert config_from_args(build_parser().parse_args([*argv, "--packed"]))[1].packed is True
    assert config_from_args(build_parser().parse_args(argv))[1].packed is None
    assert config_from_args(build_parser().parse_args([*argv, "--no-packed"]))[1].packed is False
    with pytest.raises(ConfigError, match="packed must be True, False or None"):
        EngineConfig(packed=1)  # type: ignore[arg-type]
    bodies = [
        {"model": "lm", "prompt": text, "max_tokens": 12, "temperature": 0}
        for text in ("the movie was very good", "a bad plot", "it was not dull but great", "fun")
    ]

    async def answers(config: EngineConfig) -> list[str]:
        engine = ServingEngine.from_pretrained(str(directory), adapters={"lm": str(adapter)}, config=config)
        app = create_app(engine)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                replies = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        assert engine.generation is not None
        packs = engine.generation.engine.packed
        assert packs is (config.packed is not False)  # None: packed (GPT-2 runs SDPA here)
        return [r.json()["choices"][0]["text"] for r in replies]

    expected = asyncio.run(answers(EngineConfig(max_wait_ms=1, packed=False)))
    assert asyncio.run(answers(EngineConfig(max_wait_ms=1))) == expected
    assert asyncio.run(answers(EngineConfig(max_wait_ms=1, packed=True))) == expected
