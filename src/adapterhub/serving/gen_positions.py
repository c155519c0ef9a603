"""Per-row positions in the generation engine, for adapters that intervene on positions counted per sequence (ReFT,
``AdapterModule.reads_positions``).

A step's rows are different sequences, each with its own cache length, fed tokens (a prompt, a chunk of one, a
recompute after preemption, or one new token) and prompt; its 4-D mask says nothing a method could count positions
from. When a row of the step runs such an adapter, the step's call is given its positions per row
(``CallPositions.rank`` / ``prompt``, through ``callstate.given_positions``): the fed token ``k`` of a row whose
cache holds ``c`` of its tokens is token ``c + k`` of its sequence (soft-prompt positions in front not counted),
padding is ``-1``, and the row's prompt length is its request's. A packed step (``gen_packed``: every sequence's
fed tokens in one row ``(1, T)``) gets the same per token: ``rank`` ``(1, T)`` each token's index in its own
sequence and ``prompt`` ``(1, T)`` its own sequence's prompt length; the row's ``Split`` slices both along with the
tokens (``CallPositions.columns``), so an adapter in a segment sees its own tokens' positions. A sequence therefore
gets the positions it gets alone, whatever else runs in the step, packed or not. ``check_prompt_positions`` asks
the adapters at submit whether a prompt can run so (``AdapterModule.prompt_refusal``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from adapterhub.errors import ConfigError
from adapterhub.methods.point_inputs import CallPositions
from adapterhub.runtime import callstate
from adapterhub.serving.gen_packed import PackedStep
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


def packed_positions(
    rows: Sequence[SequenceState], starts: Sequence[int], new_tokens: Sequence[int], total: int
) -> CallPositions:
    """The positions of a packed step: sequence ``rows[i]`` feeds ``new_tokens[i]`` tokens from column
    ``starts[i]`` of the ``(1, total)`` row. ``rank`` and ``prompt``: ``(1, total)``, per token."""
    rank = torch.full((1, total), -1, dtype=torch.long)  # (1, T)
    prompt = torch.zeros((1, total), dtype=torch.long)  # (1, T)
    for seq, column, count in zip(rows, starts, new_tokens, strict=True):
        assert seq.kv is not None
        first = seq.kv.length - seq.lead  # tokens of its sequence already cached
        rank[0, column : column + count] = torch.arange(first, first + count)
        prompt[0, column : column + count] = len(seq.prompt)
    return CallPositions(None, 0, rank, prompt)


def step_positions(
    model: Any, rows: Sequence[SequenceState], batch: Any
) -> contextlib.AbstractContextManager[None]:
    """The context the step's forward runs in: its per-row positions given to the model when a row runs an adapter
    that reads positions (else nothing). ``batch``: the step's ``StepBatch`` (``input_ids``, ``places()``,
    ``new_tokens``), or a packed step's ``PackedStep`` (one row: positions per token, ``packed_positions``)."""
    if not any(_reads_positions(model, seq.runs) for seq in rows):
        return contextlib.nullcontext()
    span = int(batch.input_ids.shape[1])
    if isinstance(batch, PackedStep):  # one row of every sequence's tokens
        positions = packed_positions(rows, batch.row.starts, batch.new_tokens, span)
    else:
        positions = row_positions(rows, batch.places(), batch.new_tokens, span)
    device = batch.input_ids.device  # moved once per step, not at every layer
    positions = CallPositions(None, 0, positions.rank.to(device), positions.prompt.to(device))  # type: ignore[union-attr]
    return callstate.given_positions(model._store, positions)
