"""Per-row positions in the generation engine, for adapters that intervene on positions counted per sequence (ReFT,
``AdapterModule.reads_positions``).

A step's rows are different sequences, each with its own cache length, fed tokens (a prompt, a chunk of one, a
recompute after preemption, or one new token) and prompt; its 4-D mask says nothing a method could count positions
from. When a row of the step runs such an adapter, the step's call is given its positions per row
(``CallPositions.rank`` / ``prompt``, through ``callstate.given_positions``): the fed token ``k`` of a row whose
cache holds ``c`` of its tokens is token ``c + k`` of its sequence (soft-prompt positions in front not counted),
padding is ``-1``, and the row's prompt length is its request's. A sequence therefore gets the positions it gets
alone, whatever else runs in the step. ``check_prompt_positions`` asks the adapters at submit whether a prompt can
run so (``AdapterModule.prompt_refusal``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from adapterhub.errors import ConfigError
from adapterhub.methods.point_inputs import CallPositions
from adapterhub.runtime import callstate
from adapterhub.serving.gen_scheduler import SequenceState
from adapterhub.spec.composition import Setup, setup_names


def _reads_positions(model: Any, setup: Setup | None) -> bool:
    modules = model._store.adapters  # a ModuleDict: no .get
    return any(name in modules and modules[name].reads_positions for name in setup_names(setup))


def check_prompt_positions(model: Any, setup: Setup | None, length: int) -> None:
    """Raise the ``ConfigError`` of the first adapter in ``setup`` that cannot run a prompt of ``length`` tokens
    with per-row positions."""
    modules = model._store.adapters
    for name in setup_names(setup):
        reason = modules[name].prompt_refusal(length) if name in modules else None
        if reason is not None:
            raise ConfigError(reason)


def row_positions(
    rows: Sequence[SequenceState], places: Sequence[tuple[int, int]], new_tokens: Sequence[int], span: int
) -> CallPositions:
    """The positions of a padded step: row ``i`` feeds ``new_tokens[i]`` tokens from column ``places[i][1]`` of a
    ``(len(rows), span)`` input. ``rank``: ``(rows, span)``, ``prompt``: ``(rows,)``."""
    rank = torch.full((len(rows), span), -1, dtype=torch.long)  # (B, T)
    for seq, (row, column), count in zip(rows, places, new_tokens, strict=True):
        assert seq.kv is not None
        first = seq.kv.length - seq.lead  # tokens of its sequence already cached
        rank[row, column : column + count] = torch.arange(first, first + count)
    prompt = torch.tensor([len(seq.prompt) for seq in rows], dtype=torch.long)  # (B,)
    return CallPositions(None, 0, rank, prompt)


def step_positions(
    model: Any, rows: Sequence[SequenceState], batch: Any
) -> contextlib.AbstractContextManager[None]:
    """The context the step's forward runs in: its per-row positions given to the model when a row runs an adapter
    that reads positions (else nothing). ``batch``: the step's ``StepBatch`` (``input_ids``, ``places()``,
    ``new_tokens``); a packed step never holds such a row (refused at submit: ``packed_refusal``)."""
    if not any(_reads_positions(model, seq.runs) for seq in rows):
        return contextlib.nullcontext()
    rows_in, span = batch.input_ids.shape
    if rows_in != len(rows):
        raise ConfigError(
            "An adapter that reads positions per sequence (ReFT) cannot run in a packed step; create the "
            "GenerationEngine with packed=False (the default)."
        )
    positions = row_positions(rows, batch.places(), batch.new_tokens, int(span))
    device = batch.input_ids.device  # moved once per step, not at every layer
    positions = CallPositions(None, 0, positions.rank.to(device), positions.prompt.to(device))  # type: ignore[union-attr]
    return callstate.given_positions(model._store, positions)
