"""Continuous-batching generation with an adapter per sequence: ``GenerationEngine``.

``engine.submit(prompt_ids, adapter=..., max_new_tokens=...)`` queues one request and returns a
``GenerationHandle`` (iterate it for the new token ids as they come; ``cancel()`` ends it and frees its cache at
once; ``result()`` waits for all of them). ``engine.generate(prompts, adapters=[...], max_new_tokens=...)`` submits
many and blocks for their new token ids. ``None`` as an adapter is the base model alone.

Each ``step()`` is one iteration: the scheduler (``gen_scheduler``) picks every running sequence (one new token,
or the next chunk of its prompt with ``prefill_chunk``) and admits waiting ones (their prompt or its first chunk;
round robin between adapters; with ``preempt`` it may first preempt the newest, ``gen_preempt``), the rows are
ordered adapter by adapter (rows with no adapter last; prompt-tuning rows run as the base with their soft prompt
given as embeddings, ``gen_prompt``) and the model runs ONE forward pass for all of them under ``BatchSplit(a, b, ..., None, batch_sizes=...)`` as a per-call
setup: prefill and decode are fused in that one pass, whatever the mix of adapters. Alike adapters (LoRA of equal
rank) run as one grouped computation at every point (``batch_split_grouped``). By default (``packed=None``) the
pass is ONE row of every sequence's fed tokens instead wherever that is exact and supported (``packed=True``:
always; ``gen_packed``: a ``Split`` over positions, one token slice per adapter, attention per sequence, no
padding). Each row's new keys and values go
back into its own cache (``kv_cache``) and, unless it fed a prompt chunk that leaves more to prefill, its next
token comes from its own last-position logits: the argmax
(greedy, the default) or a draw with its own generator after temperature / top-k / top-p (``sampling``), after
its own repetition / presence / frequency penalties (``gen_penalties``), so a
seeded request gets the same tokens whatever else is in the batch. ``stop`` strings end a request on its decoded
text (the tokens that may begin one are held back from the stream until they are known not to; ``gen_accept``
records, streams and ends sequences); ``n`` gives
independent sequences of one prompt (``submit_choices``; seeds ``seed, seed + 1, ...``); ``logprobs`` keeps each
chosen token's log-probability, ``top_logprobs`` the most likely tokens of the same distribution with theirs
(``handle.completion()``, ``engine.complete``).

Steps run in the thread that calls ``step()``: the background thread after ``start()`` (or ``with engine:``), or
else whoever waits on a result (``generate``, iterating a handle) drives the steps itself. A per-call adapter
setup is per thread, so it is set inside the step, in the thread that runs the forward.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.errors import AdapterNotFoundError, ConfigError
from adapterhub.methods import grouped_weights
from adapterhub.runtime.packing import check_packable
from adapterhub.serving import gen_slot_attention as slot_attention
from adapterhub.serving.gen_accept import accept, choose, end_cancelled
from adapterhub.serving.gen_checks import (
    check_adapter,
    check_lengths,
    check_model,
    check_options,
    check_prompt,
    check_tokenizer,
    default_stops,
)
from adapterhub.serving.gen_handle import Completion, GenerationHandle
from adapterhub.serving.gen_heads import check_head, last_hidden, with_heads
from adapterhub.serving.gen_packed import PackedStep, build_packed_step, packed_mode, row_reason
from adapterhub.serving.gen_penalties import apply_penalties
from adapterhub.serving.gen_positions import check_prompt_positions, step_positions
from adapterhub.serving.gen_prompt import soft_prompt, step_inputs
from adapterhub.serving.gen_scheduler import FAILED, Scheduler, SequenceState
from adapterhub.serving.kv_cache import KVPool, StepBatch, build_step
from adapterhub.serving.sampling import RowSampler, SamplingParams, StopStrings, check_n, seeds_for
from adapterhub.spec.composition import BatchSplit, Setup, setup_names

log = logging.getLogger("adapterhub.serving")


@dataclass(frozen=True)
class StepInfo:
    """What one step ran: ``prefill`` rows (a prompt, a chunk of one or a recompute) / ``decode`` rows (their last
    new token), ``new_tokens`` fed, the per-call ``setup``, ``chunks``: prefill rows whose prompt is not done
    after this step (they pick no token), and ``packed``: whether it ran as one packed row."""

    prefill: int
    decode: int
    new_tokens: int
    setup: Setup | None
    chunks: int = 0
    packed: bool = False


class GenerationEngine:
    """Continuous batching for a causal LM that ``adapterhub.init`` was applied to, one adapter (or none) per
    sequence. ``max_num_seqs``: sequences decoding together; ``max_batch_tokens``: new tokens per step (without
    ``prefill_chunk`` a prompt is prefilled whole, so it may not be longer); ``prefill_chunk``: prefill a prompt in
    chunks of at most this many tokens, one chunk per step, while the other sequences keep decoding in the same
    steps (None: whole); ``max_cache_tokens``: cache tokens of all sequences together (default ``max_num_seqs`` x
    the model's context length); by default each request reserves prompt + max_new_tokens when admitted; with
    ``preempt``, sequences hold the cache they fill, in blocks of ``cache_block`` tokens, and when the budget is
    exhausted the newest running sequence is preempted (cache freed, re-queued first, recomputed later; its tokens
    are unchanged; counted in ``stats()["preempted"]``); ``packed``: ``True`` runs each step as ONE row holding every
    sequence's fed tokens (``gen_packed``: per-token adapter segments, attention per sequence, no padding) instead
    of one padded row per sequence, and refuses at submit adapters that cannot run on a slice of a row (prefix
    tuning); ``None`` (the default) packs wherever that is exact and supported (SDPA models; a step holding such
    an adapter runs rows) and logs once each reason it runs rows (``gen_packed.packed_mode``); ``False`` runs
    rows; ``stop_ids``: default stop token ids (default: the model's
    ``eos_token_id``); ``tokenizer``: decodes the new tokens of requests with ``stop`` strings (a request may bring
    its own). The scheduling is ``gen_scheduler``'s."""

    def __init__(
        self,
        model: Any,
        *,
        max_num_seqs: int = 16,
        max_batch_tokens: int = 2048,
        max_cache_tokens: int | None = None,
        stop_ids: Iterable[int] | None = None,
        tokenizer: Any = None,
        prefill_chunk: int | None = None,
        preempt: bool = False,
        cache_block: int = 16,
        packed: bool | None = None,
    ) -> None:
        check_model(model)
        # packed steps attend per slot over the pool when the model runs SDPA (gen_slot_attention), else by mask
        self._configs = slot_attention.configs_of(model)
        self.packed, why_rows = packed_mode(model, packed, self._configs)
        self.auto_packed = packed is None  # packed where exact and supported, rows (logged once) elsewhere
        self._told: set[str] = set()  # the reasons for row steps logged so far
        if why_rows is not None:
            self._tell(f"GenerationEngine runs one padded row per sequence: {why_rows}.")
        check_tokenizer(tokenizer)
        check_options(max_num_seqs, max_batch_tokens, prefill_chunk, preempt, cache_block)
        config = model.config
        self.context = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        # a step spans at most twice the longest reservation in cache slots: within the window, no key is cut
        window = getattr(config, "sliding_window", None)
        self.window = int(window) if window else None
        if max_cache_tokens is None:
            max_cache_tokens = max_num_seqs * (self.context or 4096)
        if not isinstance(max_cache_tokens, int) or max_cache_tokens < 1:
            raise ConfigError(f"max_cache_tokens must be a positive integer, got {max_cache_tokens!r}.")
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.vocab_size = int(config.vocab_size)
        self.pad_id = int(getattr(config, "pad_token_id", None) or 0)
        self.stop_ids = frozenset(default_stops(model) if stop_ids is None else (int(s) for s in stop_ids))
        self._scheduler = Scheduler(
            max_num_seqs, max_batch_tokens, max_cache_tokens, prefill_chunk, preempt, cache_block
        )
        self._lock = threading.Lock()  # the scheduler's state
        self._step_lock = threading.Lock()  # one step at a time
        self._turn = threading.Condition(
            self._lock
        )  # exclusive() blocks waiting: the loop lets them go first
        self._exclusive_waiting = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.last_step: StepInfo | None = None
        self.per_slot = self.packed and slot_attention.supported(self._configs)
        self.mask_dtype = model.get_input_embeddings().weight.dtype
        self._pool = KVPool(max_num_seqs)  # every sequence's cache, one slot each (kv_cache)
        self._weights = (
            grouped_weights.WeightCache()
        )  # grouped adapter weights reused step to step (this engine's)

    # ------------------------------------------------------------------ public API
    def submit(
        self,
        prompt_ids: Sequence[int],
        *,
        adapter: Setup | None = None,
        max_new_tokens: int = 16,
        stop_ids: Iterable[int] | None = None,
        tokenizer: Any = None,
        head: Any = None,
        **sampling: Any,
    ) -> GenerationHandle:
        """Queue one request (it joins the running batch at the next step) and return its handle. ``adapter``: a
        name, ``Stack`` / ``Average`` of names (run on this sequence's rows alone) or None. ``sampling``:
        ``temperature``, ``top_k``, ``top_p``, ``seed``, ``stop``, ``logprobs``, ``top_logprobs``, ``repetition_penalty``,
        ``presence_penalty``, ``frequency_penalty`` (``SamplingParams``); ``tokenizer``
        decodes for ``stop`` strings (default: the engine's); ``head``: a causal-LM head (``model.add_causal_lm_head``, e.g.
        one detached from a loaded adapter) that gives this sequence's logits from the last hidden state instead of
        the model's LM head. Every check happens here: a request that is accepted
        never fails for a reason known now."""
        seqs = self._prepare(prompt_ids, 1, adapter, max_new_tokens, stop_ids, tokenizer, sampling, head)
        return self._queue(seqs)[0]

    def submit_choices(
        self,
        prompt_ids: Sequence[int],
        *,
        n: int,
        adapter: Setup | None = None,
        max_new_tokens: int = 16,
        stop_ids: Iterable[int] | None = None,
        tokenizer: Any = None,
        head: Any = None,
        **sampling: Any,
    ) -> list[GenerationHandle]:
        """Queue ``n`` independent sequences of one prompt (sharing nothing but the prompt; seeds ``seed, seed + 1,
        ...``) and return their handles; otherwise as ``submit``."""
        seqs = self._prepare(prompt_ids, n, adapter, max_new_tokens, stop_ids, tokenizer, sampling, head)
        return self._queue(seqs)

    def check(
        self,
        prompt_ids: Sequence[int],
        *,
        n: int = 1,
        adapter: Setup | None = None,
        max_new_tokens: int = 16,
        stop_ids: Iterable[int] | None = None,
        tokenizer: Any = None,
        head: Any = None,
        **sampling: Any,
    ) -> None:
        """Raise what ``submit_choices`` with these arguments would raise, queueing nothing."""
        self._prepare(prompt_ids, n, adapter, max_new_tokens, stop_ids, tokenizer, sampling, head)

    @property
    def max_num_seqs(self) -> int:
        return self._scheduler.max_num_seqs

    @staticmethod
    def default_stop_ids(model: Any) -> list[int]:
        """The model's eos token ids (its generation config's, else its config's)."""
        return default_stops(model)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        adapters: Sequence[str | None] | None = None,
        max_new_tokens: int = 16,
        stop_ids: Iterable[int] | None = None,
        n: int = 1,
        tokenizer: Any = None,
        **sampling: Any,
    ) -> list[list[int]]:
        """The new token ids of each prompt, prompt ``i`` with ``adapters[i]`` (None: the base alone); with ``n``,
        ``n`` completions per prompt, prompt by prompt (completion ``j`` of prompt ``i`` at ``i * n + j``). Greedy
        unless ``sampling`` says otherwise (as ``submit``). All requests are checked before any is queued."""
        handles = self._submit_all(prompts, adapters, max_new_tokens, stop_ids, n, tokenizer, sampling)
        return [h.result() for h in handles]

    def complete(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        adapters: Sequence[str | None] | None = None,
        max_new_tokens: int = 16,
        stop_ids: Iterable[int] | None = None,
        n: int = 1,
        tokenizer: Any = None,
        **sampling: Any,
    ) -> list[Completion]:
        """As ``generate``, but a ``Completion`` (ids, logprobs, finish reason) per sequence."""
        handles = self._submit_all(prompts, adapters, max_new_tokens, stop_ids, n, tokenizer, sampling)
        return [h.completion() for h in handles]

    def _submit_all(
        self,
        prompts: Sequence[Sequence[int]],
        adapters: Sequence[str | None] | None,
        max_new_tokens: int,
        stop_ids: Iterable[int] | None,
        n: int,
        tokenizer: Any,
        sampling: dict[str, Any],
    ) -> list[GenerationHandle]:
        if adapters is None:
            adapters = [None] * len(prompts)
        if len(adapters) != len(prompts):
            raise ConfigError(
                f"Got {len(prompts)} prompts but {len(adapters)} adapters; give one per prompt."
            )
        stops = None if stop_ids is None else list(stop_ids)
        seqs = [
            seq
            for p, a in zip(prompts, adapters, strict=True)
            for seq in self._prepare(p, n, a, max_new_tokens, stops, tokenizer, sampling)
        ]
        return self._queue(seqs)

    def _prepare(
        self,
        prompt_ids: Sequence[int],
        n: int,
        adapter: Setup | None,
        max_new_tokens: int,
        stop_ids: Iterable[int] | None,
        tokenizer: Any,
        sampling: dict[str, Any],
        head: Any = None,
    ) -> list[SequenceState]:
        """Check one request and build its ``n`` sequences (not queued)."""
        if self._closing:
            raise ConfigError("This GenerationEngine is closed; create a new one.")
        prompt = check_prompt(prompt_ids, self.vocab_size)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
        check_adapter(self.model, adapter)
        check_prompt_positions(self.model, adapter, len(prompt))
        check_head(head)
        soft = soft_prompt(self.model, adapter)
        # packed=True refuses what cannot pack (a prompt-tuning row runs as the base, its soft prompt as embeddings)
        if self.packed and not self.auto_packed and soft is None:
            check_packable(adapter, self.model._store.adapters)
        params = SamplingParams.from_kwargs(dict(sampling))
        n = check_n(n)
        check_tokenizer(tokenizer)
        tokenizer = self.tokenizer if tokenizer is None else tokenizer
        if params.stop and tokenizer is None:
            raise ConfigError(
                f"stop strings {list(params.stop)} need a tokenizer to decode the new tokens: pass tokenizer= to "
                "GenerationEngine(...) or to this request, or use stop_ids."
            )
        lead = (
            0 if soft is None else int(soft.shape[0])
        )  # prompt tuning: soft positions in front (gen_prompt)
        check_lengths(lead + len(prompt), max_new_tokens, self._scheduler, self.context, self.window)
        stops = self.stop_ids if stop_ids is None else frozenset(int(s) for s in stop_ids)
        return [
            SequenceState(
                prompt=list(prompt),
                adapter=adapter,
                max_new_tokens=max_new_tokens,
                stop_ids=stops,
                sampler=RowSampler(params, seed, self.device),
                stop_strings=StopStrings(params.stop, tokenizer) if params.stop else None,
                head=head,
                lead=lead,
            )
            for seed in seeds_for(params, n)
        ]

    def _queue(self, seqs: Sequence[SequenceState]) -> list[GenerationHandle]:
        with self._lock:
            for seq in seqs:
                self._scheduler.add(seq)
        self._wake.set()
        return [GenerationHandle(self, seq) for seq in seqs]

    @property
    def running_in_background(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> GenerationEngine:
        """Run steps in a background thread until ``close()``."""
        if not self.running_in_background:
            self._closing = False
            self._thread = threading.Thread(target=self._loop, name="adapterhub-generation", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the background thread and cancel what has not ended."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            for seq in [*self._scheduler.running, *self._scheduler.waiting]:
                end_cancelled(self._scheduler, seq)
            self._pool.trim()
            self._weights.clear()

    def __enter__(self) -> GenerationEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No step runs while this block does (e.g. to load or delete adapters of the shared model). A block
        waiting here goes before the background loop's next step (a lock alone is not fair: the loop would take it
        again at once, step after step), so it waits for one step at most."""
        with self._turn:
            self._exclusive_waiting += 1
        try:
            self._step_lock.acquire()
        finally:
            with self._turn:
                self._exclusive_waiting -= 1
                self._turn.notify_all()
        try:
            yield
        finally:
            self._step_lock.release()

    def stats(self) -> dict[str, int]:
        """``waiting`` / ``running`` sequences, ``cache_tokens`` stored, ``reserved_tokens`` of the budget (with
        ``preempt``: the blocks held), ``preempted``: preemptions so far."""
        with self._lock:
            s = self._scheduler
            return {
                "waiting": s.waiting_count(),
                "running": len(s.running),
                "cache_tokens": s.cache_tokens_in_use(),
                "reserved_tokens": s.reserved_tokens(),
                "preempted": s.preempted,
            }

    # ------------------------------------------------------------------ one iteration
    def step(self) -> StepInfo | None:
        """Run one iteration (one forward pass) over every running sequence and the newly admitted ones; None
        when there is nothing to run."""
        with self._step_lock:
            with self._lock:
                running, admitted = self._scheduler.plan()
                self._drop_removed_adapters([*running, *admitted])
                for seq in [*running, *admitted]:
                    if not seq.done:  # a running sequence has its kv: bind it to a slot of the pool
                        seq.kv.bind(self._pool)  # type: ignore[union-attr]
                rows, setup = _order_rows([*running, *admitted])
                if not rows:
                    return None
                samples = [seq.samples for seq in rows]  # False: a prefill chunk, no token this step
                decode = sum(seq.decoding for seq in rows)
                try:
                    batch = self._build_step(rows)
                except Exception as error:  # e.g. a cache reservation too short: the step's rows fail
                    for seq in rows:
                        self._scheduler.leave(seq, FAILED, error)
                    self._pool.trim()
                    raise
                if isinstance(batch, PackedStep):
                    setup = batch.row.setup  # a Split over the row's positions, one slice per adapter
            plan = batch.plan if isinstance(batch, PackedStep) else None
            try:
                with (
                    torch.no_grad(),
                    self.model.adapter_setup(setup),
                    slot_attention.active(self._configs, plan) if plan is not None else nullcontext(),
                    grouped_weights.caching(self._weights),
                    last_hidden(self.model, rows) as hidden,
                    step_positions(self.model, rows, batch),
                ):
                    output = self.model(
                        **step_inputs(self.model, rows, batch.input_ids, batch.new_tokens, batch.places()),
                        attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids,
                        past_key_values=batch.cache,
                        use_cache=True,
                        logits_to_keep=batch.last if isinstance(batch, PackedStep) else 1,
                    )
                    if isinstance(batch, PackedStep):  # one row: each sequence's last token
                        logits = with_heads(self.model, rows, output.logits[0], hidden, batch.last)  # (B, V)
                    else:
                        logits = with_heads(self.model, rows, output.logits[:, -1], hidden)  # (B, V)
                logits = apply_penalties(logits, rows)  # (B, V): each row's own penalties
                greedy = logits.argmax(dim=-1).tolist()  # (B,)
                choices = [
                    choose(seq.sampler, logits[i], greedy[i]) if samples[i] else None
                    for i, seq in enumerate(rows)
                ]
            except Exception as error:  # the step's rows fail together; the waiting ones go on
                with self._lock:
                    for seq in rows:
                        self._scheduler.leave(seq, FAILED, error)
                    self._pool.trim()
                raise
            with self._lock:
                for i, seq in enumerate(rows):
                    if seq.done or seq.kv is None:  # cancelled during the forward pass
                        continue
                    seq.kv.advance(batch.new_tokens[i])  # the forward wrote them into its slot
                    choice = choices[i]
                    if choice is None:  # a prefill chunk: its prompt goes on next step
                        continue
                    try:
                        accept(self._scheduler, seq, *choice)
                    except (
                        Exception
                    ) as error:  # e.g. its tokenizer failed to decode: that sequence alone fails
                        self._scheduler.leave(seq, FAILED, error)
                self._pool.trim()
            info = StepInfo(
                len(rows) - decode,
                decode,
                sum(batch.new_tokens),
                setup,
                samples.count(False),
                isinstance(batch, PackedStep),
            )
            self.last_step = info
            return info

    # ------------------------------------------------------------------ internals
    def _build_step(self, rows: Sequence[SequenceState]) -> StepBatch | PackedStep:
        """The step's inputs: one padded row per sequence, or (``packed``) every sequence in one row."""
        device = next(self.model.parameters()).device
        caches = [s.kv for s in rows]
        new_ids = [s.next_ids() for s in rows]
        runs = [s.runs for s in rows]
        if self.packed and self.auto_packed:  # a step with an adapter that cannot pack runs rows
            why_rows = row_reason(runs, self.model._store.adapters)
            if why_rows is not None:
                self._tell(f"A GenerationEngine step runs one padded row per sequence: {why_rows}")
                return build_step(caches, new_ids, self.pad_id, device, self._pool, self.mask_dtype)  # type: ignore[arg-type]
        if self.packed:
            per_slot = self.per_slot and not slot_attention.attention_adapters(
                self.model._store.adapters, runs
            )
            return build_packed_step(caches, new_ids, runs, device, self.mask_dtype, self._pool, per_slot)  # type: ignore[arg-type]
        return build_step(caches, new_ids, self.pad_id, device, self._pool, self.mask_dtype)  # type: ignore[arg-type]

    def _tell(self, reason: str) -> None:
        """Log ``reason`` (why steps run rows) once per engine."""
        if reason not in self._told:
            self._told.add(reason)
            log.warning(reason)

    def _loop(self) -> None:
        while not self._closing:
            with self._turn:
                self._turn.wait_for(
                    lambda: self._exclusive_waiting == 0
                )  # blocks waiting for the model go first
                busy = self._scheduler.has_work()
            if not busy:
                self._wake.wait(timeout=0.1)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception:  # the failed rows got the error; keep serving the others
                continue

    def _drop_removed_adapters(self, seqs: Sequence[SequenceState]) -> None:
        """Fail (alone) the sequences whose adapter was deleted from the model after they were submitted."""
        modules = self.model._store.adapters
        for seq in seqs:
            gone = [name for name in setup_names(seq.adapter) if name not in modules]
            if gone:
                error = AdapterNotFoundError(
                    f"Adapter {gone[0]!r} was removed from the model while a request for it was generating; "
                    "load it again and resubmit."
                )
                self._scheduler.leave(seq, FAILED, error)

    def _cancel(self, seq: SequenceState) -> None:
        with self._lock:
            end_cancelled(self._scheduler, seq)


def _order_rows(seqs: Sequence[SequenceState]) -> tuple[list[SequenceState], Setup | None]:
    """The step's rows grouped adapter by adapter (rows with no adapter last; by slot within a group) and the
    per-call setup for them."""
    groups: dict[str | None, list[SequenceState]] = {}
    for seq in seqs:
        if not seq.done:
            groups.setdefault(seq.runs, []).append(seq)
    for group in groups.values():  # by slot: consecutive slots read as a view of the pool (kv_cache)
        group.sort(key=lambda s: s.kv.slot if s.kv is not None else -1)
    if None in groups:
        groups[None] = groups.pop(None)  # last: BatchSplit runs the named adapters as one grouped computation
    names = list(groups)
    rows = [seq for name in names for seq in groups[name]]
    if len(names) <= 1:
        return rows, names[0] if names else None
    return rows, BatchSplit(*names, batch_sizes=[len(groups[n]) for n in names])  # type: ignore[arg-type]
