"""Prompt tuning per row in the generation engine: a soft prompt is ``P`` history positions in front of the
sequence's prompt, fed once at prefill and then kept in its cache like any token.

The method's own hooks prepend the prompt embeddings ``E`` ``(P, d)`` to every forward's embedding output and
refuse a non-empty key/value cache; the engine instead runs such a row as the base model (no adapter in the step's
setup) and gives the step ``inputs_embeds``: the word embeddings of every row's fed ids, with the fed positions
``h < P`` of a prompt-tuning row replaced by ``E[h]``. Positions are those of the method on decoders (the prompt
``0..P-1``, the tokens from ``P``), the cache holds the prompt's keys and values, so later steps (decode, the next
chunk, a recompute after preemption) need nothing more. Which methods give a soft prompt is data:
``SOFT_PROMPTS`` maps a method name to the function that reads ``E`` off its adapter module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from adapterhub.serving.gen_scheduler import SequenceState

SOFT_PROMPTS: dict[str, Callable[[Any], torch.Tensor]] = {
    "prompt_tuning": lambda module: module.prompt_embedding.weight,  # (P, d)
}


def soft_prompt(model: Any, adapter: Any) -> torch.Tensor | None:
    """The soft prompt ``(P, d)`` of ``adapter`` (a name of a soft-prompt method's adapter), else None."""
    if not isinstance(adapter, str):
        return None
    modules = model._store.adapters  # a ModuleDict: no .get
    if adapter not in modules:
        return None
    read = SOFT_PROMPTS.get(modules[adapter].method)
    return None if read is None else read(modules[adapter])


def step_inputs(
    model: Any,
    rows: Sequence[SequenceState],
    input_ids: torch.Tensor,
    fed: Sequence[int],
    places: Sequence[tuple[int, int]] | None = None,
) -> dict:
    """The step's model inputs: ``{"input_ids": ...}``, or ``{"inputs_embeds": (B, T, d)}`` when a sequence feeds
    soft prompt positions (sequence ``i`` feeds ``fed[i]`` tokens continuing its cache, at ``places[i]`` = (row,
    first column) of ``input_ids``; default: row ``i``, right-aligned)."""
    span = int(input_ids.shape[1])
    if places is None:
        places = [(i, span - n) for i, n in enumerate(fed)]
    soft = []
    for i, seq in enumerate(rows):
        start = 0 if seq.kv is None else seq.kv.length
        if seq.lead and start < seq.lead:
            soft.append(i)
    if not soft:
        return {"input_ids": input_ids}
    embeds = model.get_input_embeddings()(input_ids)  # (B, T, d)
    for i in soft:
        seq = rows[i]
        prompt = soft_prompt(model, seq.adapter)
        if prompt is None:  # the adapter was removed: the engine fails the row before the forward
            continue
        start = 0 if seq.kv is None else seq.kv.length
        count = min(seq.lead - start, fed[i])
        row, first = places[i]
        embeds[row, first : first + count] = prompt[start : start + count].to(embeds.dtype)
    return {"inputs_embeds": embeds}
