"""The reference systems of ``gen_engine_bench.py`` and its ratio lines, kept apart from the SmolLM2 driver so that
tests run them on a tiny Llama.

- ``add_bottlenecks``: ``count`` bottleneck adapters whose up-projection is seeded non-zero (``up = 0.02 z``,
  ``z ~ N(0, 1)``) so that every adapter changes the outputs, as ``add_loras`` does for ``lora_B``;
- ``peft_copy``: a peft ``PeftModel`` over a separate base holding OUR LoRA weights (same ``r``, ``alpha``,
  targets; ``lora_A`` / ``lora_B`` copied tensor by tensor), so that ``y = W x + (alpha / r) B A x`` is the same
  function in both libraries;
- ``peft_one_at_a_time``: peft serving one request at a time, ``set_adapter(name)`` before each;
- ``padded_generate`` / ``padded_per_group``: transformers ``generate`` over a left-padded batch, once, or once per
  adapter group (the group's adapter active for its batch);
- ``generate_batch_tokens``: transformers' continuous batching (``model.generate_batch``) with a KV cache sized
  to the workload (``cb_config``), every request's error raised;
- ``ratio_lines``: the issue's target ratios from a records dict.

Every system returns the number of output tokens it produced (exactly ``new`` per prompt: ``min_new_tokens`` for
``generate``, no end-of-sequence id for ``generate_batch``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

# ratios of issue 32: (numerator system, denominator system, target or None for a comparison without one)
TARGETS: tuple[tuple[str, str, float | None], ...] = (
    ("engine_staggered_packed", "padded_batch", 0.9),
    ("engine_steady_packed", "padded_batch", 0.9),
    ("engine_mixed_lora_packed", "engine_1_lora_packed", 0.9),
    ("engine_mixed_pfeiffer_packed", "engine_1_pfeiffer_packed", 0.9),
    ("engine_together", "generate_batch", 8.0),
    ("engine_mixed_lora_packed", "peft_one_at_a_time", None),
    ("engine_mixed_lora_packed", "padded_per_group", None),
)

# our LoRA attachment points -> the Llama-family module names peft targets
PEFT_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}


def add_bottlenecks(model: Any, count: int, config: str = "pfeiffer", seed: int = 2) -> list[str]:
    """Add ``count`` bottleneck adapters ``pfeiffer0`` ... (``config`` preset) to ``model`` (under
    ``adapterhub.init``), each up-projection weight seeded ``0.02 z``, ``z ~ N(0, 1)``; returns their names."""
    names = [f"{config.split('[')[0]}{i}" for i in range(count)]
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        model.add_adapter(name, config)
        seeded = 0
        with torch.no_grad():
            for key, param in model._store.adapters[name].named_parameters():
                if key.endswith("up.weight"):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
                    seeded += 1
        if not seeded:
            raise RuntimeError(
                f"adapter {name!r} ({config}) has no up.weight to seed; pick a bottleneck preset"
            )
    return names


def peft_copy(base: torch.nn.Module, model: Any, names: Sequence[str]) -> Any:
    """A peft ``PeftModel`` over ``base`` (a separate copy of ``model``'s base weights) holding adapters ``names``
    with ``model``'s LoRA weights: same r, alpha, rslora and targets, each ``lora_A`` (r, d_in) / ``lora_B``
    (d_out, r) copied. Raises when a LoRA of ours has no peft counterpart or a peft module no LoRA of ours."""
    from peft import LoraConfig, get_peft_model

    peft_model: Any = None
    for name in names:
        ours = model._store.adapters[name]
        config = ours.config
        unknown = [t for t in config.targets if t not in PEFT_MODULES]
        if unknown or config.dropout or config.bias != "none" or config.init != "lora":
            raise ValueError(
                f"{name}: peft_copy maps plain LoRAs on {sorted(PEFT_MODULES)} only (got targets "
                f"{config.targets}, dropout {config.dropout}, bias {config.bias!r}, init {config.init!r})"
            )
        peft_config = LoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            use_rslora=config.use_rslora,
            target_modules=[PEFT_MODULES[t] for t in config.targets],
            lora_dropout=0.0,
            bias="none",
        )
        if peft_model is None:
            peft_model = get_peft_model(base, peft_config, adapter_name=name)
        else:
            peft_model.add_adapter(name, peft_config)
        weights = dict(ours.named_parameters())  # "layers.{i}.{point}.lora_A" -> (r, d_in)
        copied = set()
        with torch.no_grad():
            for module_name, module in peft_model.named_modules():
                if not hasattr(module, "lora_A") or name not in module.lora_A:
                    continue
                match = re.search(r"layers\.(\d+)\..*?(\w+)$", module_name)
                points = {v: k for k, v in PEFT_MODULES.items()}
                if match is None or match.group(2) not in points:
                    raise ValueError(f"peft module {module_name!r} does not map onto a LoRA point of ours")
                key = f"layers.{match.group(1)}.{points[match.group(2)]}"
                for part in ("lora_A", "lora_B"):
                    source = weights[f"{key}.{part}"]
                    target = getattr(module, part)[name].weight
                    if target.shape != source.shape:
                        raise ValueError(
                            f"{key}.{part}: ours {tuple(source.shape)}, peft {tuple(target.shape)}"
                        )
                    target.copy_(source)
                    copied.add(f"{key}.{part}")
        missing = sorted(set(weights) - copied)
        if missing:
            raise ValueError(f"{name}: LoRA weights with no peft module: {missing[:4]}")
    return peft_model.eval()


def left_padded(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` (n, width) with each prompt right-aligned after ``pad`` ids, ``mask`` (n, width) 1 on prompt ids."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def padded_generate(model: Any, prompts: Sequence[Sequence[int]], new: int, pad: int) -> list[list[int]]:
    """Greedy ``generate`` over one left-padded batch, exactly ``new`` tokens per prompt; the new ids per prompt."""
    ids, mask = left_padded(prompts, pad)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=pad,
        )  # (n, width + new)
    return out[:, ids.shape[1] :].tolist()


def padded_per_group(
    model: Any, prompts: Sequence[Sequence[int]], adapters: Sequence[str | None], new: int, pad: int
) -> list[list[int]]:
    """``padded_generate`` once per adapter group (prompts sharing an adapter, first-seen order) under
    ``model.adapter_setup(adapter)``; the new ids per prompt in the prompts' order."""
    groups: dict[str | None, list[int]] = {}
    for i, adapter in enumerate(adapters):
        groups.setdefault(adapter, []).append(i)
    out: list[list[int]] = [[] for _ in prompts]
    for adapter, rows in groups.items():
        with model.adapter_setup(adapter):
            for i, tokens in zip(rows, padded_generate(model, [prompts[i] for i in rows], new, pad)):
                out[i] = tokens
    return out


def peft_one_at_a_time(
    peft_model: Any, prompts: Sequence[Sequence[int]], adapters: Sequence[str], new: int, pad: int
) -> list[list[int]]:
    """peft serving request by request: ``set_adapter(adapter)`` then greedy ``generate`` of exactly ``new``
    tokens for that prompt alone; the new ids per prompt."""
    out = []
    with torch.no_grad():
        for prompt, adapter in zip(prompts, adapters):
            peft_model.set_adapter(adapter)
            ids = peft_model.generate(
                input_ids=torch.tensor([list(prompt)]),
                attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad,
            )  # (1, len(prompt) + new)
            out.append(ids[0, len(prompt) :].tolist())
    return out


def cb_config(prompts: Sequence[Sequence[int]], new: int, max_batch_tokens: int = 4096) -> Any:
    """A ``ContinuousBatchingConfig`` sized to the workload: enough KV pages for every prompt plus ``new`` tokens
    at once, ``max_batch_tokens`` as our engine's, every request in one batch. Left ``None``, transformers sizes
    the cache on CPU from the machine's total memory less this process' (psutil): most of the RAM, tens of seconds
    to allocate on a tiny Llama, and a hazard on a shared machine."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    page = 256
    pages = sum(math.ceil((len(p) + new) / page) for p in prompts)
    return ContinuousBatchingConfig(
        page_size=page,
        num_blocks=pages + len(prompts),
        max_batch_tokens=max_batch_tokens,
        max_requests_per_batch=len(prompts),
    )


def generate_batch_tokens(
    model: Any, prompts: Sequence[Sequence[int]], new: int, pad: int
) -> list[list[int]]:
    """transformers' continuous batching over ``prompts``: greedy, exactly ``new`` tokens each (no end-of-sequence
    id); the new ids per prompt in order. Raises with transformers' message when a request fails or is missing."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=-1, pad_token_id=pad)
    with torch.no_grad():
        results = model.generate_batch(
            [list(p) for p in prompts],
            generation_config=config,
            continuous_batching_config=cb_config(prompts, new),
            max_new_tokens=new,
            warmup=False,
        )
    outputs = list(results.values())
    errors = [r.error for r in outputs if r.error is not None]
    if errors or len(outputs) != len(prompts):
        raise RuntimeError(
            f"generate_batch returned {len(outputs)} of {len(prompts)} requests; errors: {errors[:2]}"
        )
    return [list(r.generated_tokens) for r in outputs]


def ratio_lines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per ratio ``numerator / denominator: R.RRx (target >= T: met | NOT met)`` (no parenthesis for a
    comparison without a target) from the records' tokens/s; a pair with a system not run or failed (no ``tokens_per_s``) says which and why instead of a number."""
    lines = []
    for numerator, denominator, target in TARGETS:
        head = f"{numerator} / {denominator}:"
        absent = [
            name for name in (numerator, denominator) if results.get(name, {}).get("tokens_per_s") is None
        ]
        if absent:
            reasons = [f"{name} {results[name]['error']}" if name in results else name for name in absent]
            lines.append(f"{head} n/a (not measured: {'; '.join(reasons)})")
            continue
        ratio = results[numerator]["tokens_per_s"] / results[denominator]["tokens_per_s"]
        if target is None:
            lines.append(f"{head} {ratio:.2f}x")
        else:
            verdict = "met" if ratio >= target else "NOT met"
            lines.append(f"{head} {ratio:.2f}x (target >= {target:g}x: {verdict})")
    return lines
