"""Text generation for adapters with a causal-LM head: greedy or sampled decoding with the base model's KV cache.

``generate_ids(model, head, setup, prompts, ...)`` (on the model thread) left-pads the prompts, runs the base model
under the adapter's per-call setup (``model.adapter_setup``), applies the adapter's head to the last position and
appends one token per step, reusing ``past_key_values``. ``temperature == 0`` is greedy; otherwise tokens are
sampled from ``softmax(logits / temperature)`` restricted to the smallest set of probability ``>= top_p``, with a
per-request ``torch.Generator`` (``seed``), never the global random state. A row stops at ``eos_token_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from adapterhub.errors import ConfigError
from adapterhub.runtime.head_inputs import HeadInputs
from adapterhub.runtime.layers import get_base_model


def check_generates(head: Any, what: str) -> None:
    if head is None or head.head_type != "causal_lm":
        kind = "no head" if head is None else f"a {head.head_type} head"
        raise ConfigError(f"{what} has {kind}; generation needs an adapter saved with a causal_lm head.")


def _next_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> torch.Tensor:
    """``logits`` (rows, vocab) -> (rows,) token ids."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate_ids(
    model: Any,
    head: Any,
    setup: Any,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    on_step: Callable[[list[int | None]], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[list[int]]:
    """The new token ids of each prompt (without the prompt), at most ``max_new_tokens`` each. ``on_step`` gets
    each step's new token per row (None for rows that have stopped); ``cancelled()`` true stops early."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):  # left padding: the last position is every row's newest token
        ids[i, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (rows, T)
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    embeddings = None
    if head.needs_embeddings:
        from adapterhub.runtime.head_inputs import output_embedding_matrix

        embeddings = output_embedding_matrix(model)
    base = get_base_model(model)
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    past, step_ids, step_positions = None, ids, positions
    with model.adapter_setup(setup):
        for _ in range(max_new_tokens):
            output = base(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_positions,
                past_key_values=past,
                use_cache=True,
            )
            past = output.past_key_values
            hidden = output.last_hidden_state[:, -1:]  # (rows, 1, d)
            logits = head(
                HeadInputs(hidden=hidden, attention_mask=None, input_ids=None, embeddings=embeddings)
            ).logits
            token = _next_token(logits[:, -1], temperature, top_p, generator)  # (rows,)
            token = torch.where(done, torch.full_like(token, pad_id), token)
            step: list[int | None] = [None if done[i] else int(token[i]) for i in range(len(prompts))]
            for i, new in enumerate(step):
                if new is not None:
                    out[i].append(new)
            if on_step is not None:
                on_step(step)
            if eos_id is not None:
                done |= token == eos_id
            if bool(done.all()) or (cancelled is not None and cancelled()):
                break
            step_ids = token[:, None]
            step_positions = step_positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return out
