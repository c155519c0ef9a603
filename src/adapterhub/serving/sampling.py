"""Per-request sampling for the generation engine: ``SamplingParams`` (checked at submit), the logits processing
of transformers' warpers (``process_logits``), a ``RowSampler`` with one ``torch.Generator`` per sequence, and
``StopStrings`` (stop on decoded text, holding back the tokens that may begin a stop string).

Log-probabilities (``logprobs``, ``top_logprobs``) are taken from the distribution the token is chosen from:
``log_softmax`` of the row's logits after its penalties and, when sampling, after temperature / top-k / top-p (for
greedy rows, of the penalized raw logits). This is vLLM's ``--logprobs-mode processed_logprobs``; vLLM's default
(``raw_logprobs``) reports the model's distribution before penalties and temperature. Without penalties, greedy
requests get the same numbers either way.

The processing order and arithmetic are transformers' ``TemperatureLogitsWarper`` -> ``TopKLogitsWarper`` ->
``TopPLogitsWarper`` (filter value ``-inf``, at least one token kept), then ``softmax`` and ``torch.multinomial``
on a ``(1, vocab)`` row, as ``model.generate(do_sample=True)`` does. A seeded request draws only from its own
generator, so its tokens depend on its prompt, adapter and parameters alone, never on the rest of the batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from adapterhub.errors import ConfigError, did_you_mean

_MAX_SEED = 2**63
MAX_TOP_LOGPROBS = 20  # as OpenAI's top_logprobs (and vLLM's default max_logprobs)

TopLogprobs = list[tuple[int, float]]  # one position's alternatives: (token id, logprob), most likely first


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens. ``temperature``: 0 is greedy (the default), > 0 samples from
    ``softmax(logits / temperature)``; ``top_k``: keep the k most likely tokens (0: all); ``top_p``: keep the
    smallest set of tokens whose probability reaches ``top_p`` (1: all); ``seed``: the generator's seed (None: a
    fresh random one); ``stop``: strings that end the request, cut off before them (needs a tokenizer);
    ``logprobs``: return the log-probability of each chosen token under the distribution it was drawn from;
    ``top_logprobs``: also the ``top_logprobs`` (0 to ``MAX_TOP_LOGPROBS``) most likely tokens of that same
    distribution at each position with their log-probabilities (needs ``logprobs=True``; tokens that top-k /
    top-p filtered out, at probability 0, are left out, so a position may list fewer);
    ``repetition_penalty`` (> 0, 1: off; transformers' definition over prompt and new tokens),
    ``presence_penalty`` and ``frequency_penalty`` (0: off; OpenAI's definition over the new tokens): applied to the
    raw logits before everything above, greedy included (``gen_penalties``)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"temperature must be a finite number >= 0 (0: greedy), got {t!r}.")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0: no top-k filter), got {k!r}.")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ConfigError(f"top_p must be a number in (0, 1] (1: no nucleus filter), got {p!r}.")
        if self.temperature == 0 and (k > 0 or p < 1):
            raise ConfigError(
                f"top_k={k} / top_p={p} filter a sampled distribution, but temperature=0 is greedy; set "
                "temperature > 0 to sample, or leave top_k and top_p out."
            )
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < _MAX_SEED):
            raise ConfigError(f"seed must be an integer in [0, 2**63) or None, got {s!r}.")
        stop = self.stop
        if isinstance(stop, str):
            object.__setattr__(self, "stop", (stop,))
        elif not isinstance(stop, (tuple, list)) or not all(isinstance(x, str) and x for x in stop):
            raise ConfigError(f"stop must be a string or a list of non-empty strings, got {stop!r}.")
        else:
            object.__setattr__(self, "stop", tuple(stop))
        if not all(self.stop):
            raise ConfigError("A stop string is empty; give non-empty strings.")
        r = self.repetition_penalty
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise ConfigError(f"repetition_penalty must be a finite number > 0 (1: off), got {r!r}.")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(
                    f"{name} must be a finite number (0: off; OpenAI allows -2 to 2), got {v!r}."
                )
        if not isinstance(self.logprobs, bool):
            raise ConfigError(f"logprobs must be True or False, got {self.logprobs!r}.")
        top = self.top_logprobs
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ConfigError(
                f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS} (0: the chosen token alone), "
                f"got {top!r}."
            )
        if top > 0 and not self.logprobs:
            raise ConfigError(f"top_logprobs={top} needs logprobs=True; set logprobs=True as well.")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> SamplingParams:
        """Build from keyword arguments, rejecting unknown ones with the list of valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            hints = "".join(did_you_mean(k, valid) for k in unknown)
            raise ConfigError(
                f"Unknown sampling parameter(s) {', '.join(repr(k) for k in unknown)}{hints}. "
                f"Valid ones: {', '.join(valid)}."
            )
        if kwargs.get("stop") is None:
            kwargs = {**kwargs, "stop": ()}
        return cls(**kwargs)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def check_n(n: object) -> int:
    """``n`` (completions per prompt) must be a positive integer."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n (completions per prompt) must be a positive integer, got {n!r}.")
    return n


def seeds_for(params: SamplingParams, n: int) -> list[int]:
    """The seeds of a request's ``n`` sequences: ``seed, seed + 1, ...``, or fresh random ones without a seed."""
    if params.seed is None:
        return [int.from_bytes(os.urandom(8), "little") % _MAX_SEED for _ in range(n)]
    if params.seed + n - 1 >= _MAX_SEED:
        raise ConfigError(
            f"seed + n - 1 must stay below 2**63; lower the seed (got seed={params.seed}, n={n})."
        )
    return [params.seed + j for j in range(n)]


def process_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p on ``logits`` ``(rows, vocab)`` as transformers' warpers do them, in float32;
    filtered tokens get ``-inf``. Greedy params return the logits unchanged (in float32)."""
    scores = logits.float()  # (R, V)
    if params.greedy:
        return scores
    if params.temperature != 1.0:
        scores = scores / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, scores.size(-1))
        remove = scores < torch.topk(scores, k)[0][..., -1, None]  # (R, V)
        scores = scores.masked_fill(remove, -float("inf"))
    if params.top_p < 1.0:
        sorted_scores, sorted_ids = torch.sort(scores, descending=False)  # (R, V) ascending
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        sorted_remove = cumulative <= (1 - params.top_p)
        sorted_remove[..., -1:] = False  # the most likely token always stays
        remove = sorted_remove.scatter(1, sorted_ids, sorted_remove)
        scores = scores.masked_fill(remove, -float("inf"))
    return scores


class RowSampler:
    """Picks one sequence's tokens from its own logits with its own generator (per-sequence state: never shared
    between sequences or threads)."""

    def __init__(self, params: SamplingParams, seed: int, device: torch.device) -> None:
        self.params = params
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def choose(self, logits: torch.Tensor) -> tuple[int, float | None, TopLogprobs | None]:
        """``(token, logprob, top)`` from one row's last-position ``logits`` ``(vocab,)``. Greedy: the argmax;
        sampled: a draw from the processed distribution. ``logprob`` (None unless asked for): the token's value in
        ``L = log_softmax(process_logits(logits))`` (for greedy, ``log_softmax(logits)``); ``top`` (None unless
        ``top_logprobs`` > 0): ``torch.topk(L, top_logprobs)`` as ``(id, logprob)`` pairs, most likely first,
        without ``-inf`` entries (tokens filtered out)."""
        scores = process_logits(logits[None], self.params)  # (1, V)
        if self.params.greedy:
            token = int(scores[0].argmax())
        else:
            probs = torch.softmax(scores, dim=-1)  # (1, V)
            token = int(torch.multinomial(probs, num_samples=1, generator=self.generator)[0, 0])
        if not self.params.logprobs:
            return token, None, None
        logprobs = torch.log_softmax(scores[0], dim=-1)  # (V,)
        top = top_logprobs(logprobs, self.params.top_logprobs) if self.params.top_logprobs else None
        return token, float(logprobs[token]), top


def top_logprobs(logprobs: torch.Tensor, k: int) -> TopLogprobs:
    """The ``k`` largest entries of ``logprobs`` ``(vocab,)`` as ``(token id, logprob)``, largest first (ties: as
    ``torch.topk``), leaving out ``-inf`` (tokens of probability 0)."""
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))  # (k,), (k,)
    return [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True) if v != -math.inf]


class StopStrings:
    """Ends a sequence when its decoded new tokens contain one of ``stops``. ``check(tokens)`` returns ``(count,
    hit)``: on a hit, how many tokens to keep (those whose text ends before the first stop string); otherwise how
    many may be streamed now (all but those whose text could begin a stop string)."""

    def __init__(self, stops: Sequence[str], tokenizer: Any) -> None:
        self.stops = tuple(stops)
        self.tokenizer = tokenizer

    def _text(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True))

    def check(self, tokens: Sequence[int]) -> tuple[int, bool]:
        text = self._text(tokens)
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            return self._within(tokens, min(found)), True
        held = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        if held == 0:
            return len(tokens), False
        return self._within(tokens, len(text) - held), False

    def _within(self, tokens: Sequence[int], limit: int) -> int:
        """The most leading tokens whose text has at most ``limit`` characters."""
        for k in range(len(tokens), 0, -1):
            if len(self._text(tokens[:k])) <= limit:
                return k
        return 0
