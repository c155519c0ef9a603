"""The generation engine's checks at construction and at submit: the model (a decoder-only causal LM with
adapterhub, nothing merged), a prompt (token ids in the vocabulary), a tokenizer (has ``decode``), an adapter
setup (names of mixable adapters, or ``Stack`` / ``Average`` of them), and the model's default stop ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapterhub.errors import AdapterNotFoundError, ConfigError, UnsupportedArchitectureError, did_you_mean
from adapterhub.serving.gen_prompt import SOFT_PROMPTS
from adapterhub.spec.composition import Average, Setup, Stack, setup_names

# methods whose adapters the engine runs per row (tested token-identical to generate() with the adapter alone);
# prefix tuning's keys/values are prepended inside attention at every step (never cached), per row by BatchSplit;
# prompt tuning's soft prompt is fed once as history positions (gen_prompt), alone on its rows
MASKED_ATTENTION = frozenset({"eager", "sdpa"})  # take an explicit 4-D additive mask as it is (kv_cache)
# ReFT counts its positions per row (gen_positions)
MIXABLE_METHODS = frozenset({"lora", "dora", "ia3", "bottleneck", "prefix_tuning", "reft", *SOFT_PROMPTS})


def check_adapter(model: Any, setup: Setup | None) -> None:
    """A name, or ``Stack`` / ``Average`` of names (a composition, run on its own rows), of mixable adapters."""
    if setup is None:
        return
    if isinstance(setup, (Stack, Average)):
        for child in setup.children:
            if not isinstance(child, (str, Stack, Average)):
                raise ConfigError(
                    f"The generation engine runs adapter names and Stack / Average of them per sequence, not "
                    f"{setup!r}; generate with model.generate() and the setup active instead."
                )
            check_adapter(model, child)
            for name in setup_names(child):
                module = model._store.adapters[name]
                if type(setup).__name__ not in module.composable:
                    raise ConfigError(f"Adapter {name!r} cannot sit in {type(setup).__name__} ({setup!r}).")
                if module.method in SOFT_PROMPTS:
                    raise ConfigError(
                        f"Adapter {name!r} is a {module.method} adapter: the generation engine runs it alone on its "
                        f"rows, not in {type(setup).__name__} ({setup!r}); generate with model.generate() and the "
                        "setup active instead (use_cache=False)."
                    )
        return
    adapter = setup
    if not isinstance(adapter, str):
        raise ConfigError(
            f"An adapter is a name, Stack / Average of names, or None (the base model alone), got {adapter!r}."
        )
    modules = model._store.adapters
    if adapter not in modules:
        known = ", ".join(modules) or "none"
        raise AdapterNotFoundError(
            f"No adapter named {adapter!r}{did_you_mean(adapter, modules)} on this model (adapters: {known}). "
            "Add or load it before submitting."
        )
    module = modules[adapter]
    if module.method not in MIXABLE_METHODS or "BatchSplit" not in module.composable:
        raise ConfigError(
            f"Adapter {adapter!r} is a {module.method} adapter; the generation engine runs "
            f"{', '.join(sorted(MIXABLE_METHODS))} adapters per sequence so far; generate "
            "with model.generate() and the adapter active instead."
        )


def check_options(
    max_num_seqs: int, max_batch_tokens: int, prefill_chunk: int | None, preempt: bool, cache_block: int
) -> None:
    """The engine's scheduling options: positive integers, every running sequence able to feed a token per step,
    a prefill chunk that fits a step."""
    for name, value in (
        ("max_num_seqs", max_num_seqs),
        ("max_batch_tokens", max_batch_tokens),
        ("cache_block", cache_block),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if max_batch_tokens < max_num_seqs:
        raise ConfigError(
            f"max_batch_tokens ({max_batch_tokens}) must be at least max_num_seqs ({max_num_seqs}): every "
            "running sequence feeds one token per step."
        )
    if prefill_chunk is not None and (
        not isinstance(prefill_chunk, int) or isinstance(prefill_chunk, bool) or not prefill_chunk >= 1
    ):
        raise ConfigError(
            f"prefill_chunk must be a positive integer or None (whole prompts), got {prefill_chunk!r}."
        )
    if prefill_chunk is not None and prefill_chunk > max_batch_tokens:
        raise ConfigError(
            f"prefill_chunk ({prefill_chunk}) must be at most max_batch_tokens ({max_batch_tokens}): a chunk is fed "
            "in one step."
        )
    if not isinstance(preempt, bool):
        raise ConfigError(f"preempt must be True or False, got {preempt!r}.")


def check_lengths(
    prompt: int, max_new_tokens: int, scheduler: Any, context: int | None, window: int | None
) -> None:
    """A request of ``prompt`` tokens and ``max_new_tokens`` fits a step (or is chunked), the model's ``context``,
    its sliding ``window`` (kept exact up to half of it) and, alone, the cache budget."""
    if scheduler.prefill_chunk is None and prompt > scheduler.max_batch_tokens:
        raise ConfigError(
            f"The prompt has {prompt} tokens, more than max_batch_tokens={scheduler.max_batch_tokens} (a prompt "
            "is prefilled in one step). Raise max_batch_tokens, shorten the prompt, or set prefill_chunk."
        )
    need = prompt + max_new_tokens
    if context is not None and need > context:
        raise ConfigError(
            f"prompt ({prompt}) + max_new_tokens ({max_new_tokens}) = {need} tokens exceed the model's context of "
            f"{context}; lower max_new_tokens or shorten the prompt."
        )
    if window is not None and 2 * need > window:
        raise ConfigError(
            f"prompt ({prompt}) + max_new_tokens ({max_new_tokens}) = {need} tokens; this model's sliding-window "
            f"attention (window {window}) is kept exact by the engine up to {window // 2} tokens per request. Lower "
            "max_new_tokens or shorten the prompt."
        )
    held = -(-need // scheduler.cache_block) * scheduler.cache_block if scheduler.preempt else need
    if held > scheduler.budget.capacity:
        blocks = f" (in blocks of {scheduler.cache_block})" if scheduler.preempt else ""
        raise ConfigError(
            f"The request needs {held} cache tokens{blocks}, more than max_cache_tokens={scheduler.budget.capacity}; "
            "lower max_new_tokens or raise max_cache_tokens."
        )


def check_tokenizer(tokenizer: Any) -> None:
    if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
        raise ConfigError(
            f"A tokenizer must have a decode(ids) method (a transformers tokenizer), got {type(tokenizer).__name__}."
        )


def check_prompt(prompt_ids: Sequence[int], vocab_size: int) -> list[int]:
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence):
        raise ConfigError(
            f"A prompt is a list of token ids (tokenize text first), got {type(prompt_ids).__name__}."
        )
    prompt = list(prompt_ids)
    if not prompt:
        raise ConfigError("The prompt is empty; give at least one token id (e.g. the BOS token).")
    bad = [t for t in prompt if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size]
    if bad:
        raise ConfigError(f"Token ids must be integers in [0, {vocab_size}); got {bad[:5]}.")
    return prompt


def default_stops(model: Any) -> list[int]:
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def check_model(model: Any) -> None:
    if not callable(getattr(model, "adapter_setup", None)):
        raise ConfigError(
            "GenerationEngine needs a model that adapterhub.init() was applied to (per-sequence adapters run "
            "through its per-call setups); call adapterhub.init(model) first."
        )
    config = model.config
    if getattr(config, "is_encoder_decoder", False) or not callable(
        getattr(model, "get_output_embeddings", None)
    ):
        raise UnsupportedArchitectureError(
            f"GenerationEngine runs decoder-only causal LMs (AutoModelForCausalLM); got {type(model).__name__}."
        )
    if model.get_output_embeddings() is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no LM head; load the model with AutoModelForCausalLM."
        )
    impl = str(getattr(config, "_attn_implementation", None) or "eager").removeprefix("adapterhub_")
    if impl not in MASKED_ATTENTION:
        raise ConfigError(
            f"GenerationEngine gives attention a 4-D mask over its cache slots, so it needs attn_implementation "
            f"'sdpa' or 'eager'; this model uses {impl!r}. Call model.set_attn_implementation('sdpa') first."
        )
    if model._store.merged:
        raise ConfigError(
            f"Adapter(s) {list(model._store.merged)} are merged into the base weights, so every sequence would run "
            "them; call model.unmerge_adapter() before creating a GenerationEngine."
        )
