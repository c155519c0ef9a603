"""Per-request penalties of the generation engine, applied row by row to one step's batched logits.

For a sequence with prompt ``x`` and new tokens ``y`` so far, on its raw next-token logits ``l`` (before
temperature / top-k / top-p, as transformers and vLLM order them):

- ``repetition_penalty`` ``r`` (transformers' ``RepetitionPenaltyLogitsProcessor``, the CTRL paper): for every
  token id ``t`` in ``x`` or ``y`` (counted once), ``l[t] = l[t] * r`` if ``l[t] < 0`` else ``l[t] / r``. ``r = 1``
  changes nothing; ``r > 1`` makes repeats less likely.
- ``presence_penalty`` ``p`` and ``frequency_penalty`` ``f`` (OpenAI's definition, over the new tokens ``y`` only,
  as OpenAI and vLLM do): ``l[t] -= f * c[t] + p * [c[t] > 0]`` with ``c[t]`` the count of ``t`` in ``y``.

The repetition penalty comes first, then presence / frequency. Rows without penalties are left as they are (the
logits of the whole batch are copied to float32 once when any row has one, as ``generate`` scores in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def has_penalties(params: Any) -> bool:
    """Whether ``params`` (``SamplingParams``) change the logits by a penalty."""
    return bool(
        params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    )


def penalize_row(scores: torch.Tensor, params: Any, prompt: Sequence[int], tokens: Sequence[int]) -> None:
    """Apply ``params``' penalties in place to one row's ``scores`` ``(vocab,)`` (float) given its ``prompt`` and
    new ``tokens`` so far (see the module docstring)."""
    vocab = scores.shape[-1]
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt) | set(tokens)), dtype=torch.long, device=scores.device)  # (S,)
        picked = scores[seen]  # (S,)
        r = float(params.repetition_penalty)
        scores[seen] = torch.where(picked < 0, picked * r, picked / r)
    if tokens and (params.presence_penalty != 0.0 or params.frequency_penalty != 0.0):
        ids = torch.tensor(list(tokens), dtype=torch.long, device=scores.device)  # (N,)
        counts = torch.bincount(ids, minlength=vocab).to(scores.dtype)  # (V,)
        scores -= float(params.frequency_penalty) * counts + float(params.presence_penalty) * (counts > 0)


def apply_penalties(logits: torch.Tensor, rows: Sequence[Any]) -> torch.Tensor:
    """One step's ``logits`` ``(B, vocab)`` with each row's penalties applied; ``rows[i]`` is the sequence of row
    ``i`` (``prompt``, ``tokens`` and ``sampler.params``). Returns ``logits`` itself when no row has a penalty,
    else a float32 copy."""
    penalized = [i for i, seq in enumerate(rows) if has_penalties(seq.sampler.params)]
    if not penalized:
        return logits
    scores = logits.float().clone()  # (B, V)
    for i in penalized:
        seq = rows[i]
        penalize_row(scores[i], seq.sampler.params, seq.prompt, seq.tokens)
    return scores
