"""Evaluation of a ``generation`` task by generating: batched greedy decoding of the dev prompts, answer accuracy,
allowed answers and their spread, and the per-token dev loss over response tokens.

* **Answer accuracy**: normalised exact match of the generated answer against the gold one (:func:`normalise`:
  case, surrounding spaces and final punctuation ignored).
* **Allowed fraction**: the fraction of generated answers that are one of the task's allowed answers
  (``TaskData.answers``; ``None`` when the task has none), and ``answer_counts``: how many generated answers are
  each allowed answer, plus ``"other"``. Where the allowed answers differ per row (multiple choice turned into
  instructions: each dev row's ``Example.choices``), a generated answer is allowed when it is one of its own
  row's answers, and ``answer_counts`` counts the positions picked (``"choice 1"``, ``"choice 2"``, ...,
  ``"other"``), which shows a bias towards a position.
* **Majority rate**: the share of the most frequent gold answer (per-row answers: the most frequent gold
  position), the accuracy of always answering it.
* **Loss**: the mean cross-entropy per response token (the tokens that carry loss in training) over the dev rows.

Decoding is ``model.generate`` (greedy, KV cache; without the cache under prompt tuning, whose soft tokens
cannot follow one) over left-padded batches of the prompts that
:func:`adapterhub.data.chat.generation_prompt` renders, with the model's active adapters (or none:
:func:`evaluate_generation` takes ``adapters=False`` for the zero-shot figure, through the per-call
``model.adapter_setup(None)``, so nothing on the shared model changes).
"""

from __future__ import annotations

import contextlib
import string
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adapterhub.data.chat import generation_prompt
from adapterhub.data.task import Example
from adapterhub.errors import ConfigError
from adapterhub.training.lm_loss import DEFAULT_CHUNK, ChunkedLossUnsupported, generation_loss

OTHER = "other"
_TRAILING = string.punctuation + " \t\n\r"


def normalise(answer: str) -> str:
    """``answer`` compared case-insensitively without surrounding spaces or final punctuation:
    ``"  Positive.\\n"`` -> ``"positive"``."""
    return answer.strip().rstrip(_TRAILING).strip().lower()


@dataclass(frozen=True)
class AnswerMetrics:
    """Answer-level figures of a list of generated answers against gold answers (see the module docstring)."""

    accuracy: float
    allowed_fraction: float | None
    answer_counts: dict[str, int]
    majority_rate: float
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "allowed_fraction": self.allowed_fraction,
            "answer_counts": dict(self.answer_counts),
            "majority_rate": self.majority_rate,
            "examples": self.examples,
        }


def answer_metrics(
    generated: Sequence[str],
    gold: Sequence[str],
    answers: Sequence[str] = (),
    row_answers: Sequence[Sequence[str]] | None = None,
) -> AnswerMetrics:
    """Accuracy, allowed fraction, spread over ``answers`` (+ ``other``) and the gold majority rate;
    ``row_answers`` (one list per row, instead of ``answers``): the spread over the positions picked."""
    if len(generated) != len(gold):
        raise ConfigError(
            f"{len(generated)} generated answers for {len(gold)} gold answers; they must pair up."
        )
    if not gold:
        raise ConfigError("no dev rows to evaluate on; a generation task needs dev examples.")
    if row_answers is not None:
        if answers:
            raise ConfigError("give the allowed answers once for the task (answers) or per row, not both.")
        return _row_answer_metrics(generated, gold, row_answers)
    by_form = {normalise(answer): answer for answer in answers}
    hits = sum(normalise(g) == normalise(t) for g, t in zip(generated, gold, strict=True))
    counts: dict[str, int] = {answer: 0 for answer in answers}
    if answers:
        counts[OTHER] = 0
        for text in generated:
            counts[by_form.get(normalise(text), OTHER)] += 1
    allowed = None if not answers else (len(generated) - counts[OTHER]) / len(generated)
    majority = Counter(normalise(t) for t in gold).most_common(1)[0][1] / len(gold)
    return AnswerMetrics(hits / len(gold), allowed, counts, majority, len(gold))


def _row_answer_metrics(
    generated: Sequence[str], gold: Sequence[str], row_answers: Sequence[Sequence[str]]
) -> AnswerMetrics:
    if len(row_answers) != len(gold):
        raise ConfigError(f"{len(row_answers)} rows of allowed answers for {len(gold)} gold answers.")
    counts: Counter[str] = Counter()
    gold_positions: Counter[str] = Counter()
    hits = 0
    for text, truth, allowed in zip(generated, gold, row_answers, strict=True):
        forms = [normalise(answer) for answer in allowed]
        hits += normalise(text) == normalise(truth)
        picked = normalise(text)
        counts[f"choice {forms.index(picked) + 1}" if picked in forms else OTHER] += 1
        truth_form = normalise(truth)
        gold_positions[f"choice {forms.index(truth_form) + 1}" if truth_form in forms else OTHER] += 1
    width = max(len(allowed) for allowed in row_answers)
    spread = {f"choice {i}": counts[f"choice {i}"] for i in range(1, width + 1)} | {OTHER: counts[OTHER]}
    majority = gold_positions.most_common(1)[0][1] / len(gold)
    allowed_fraction = (len(generated) - counts[OTHER]) / len(generated)
    return AnswerMetrics(hits / len(gold), allowed_fraction, spread, majority, len(gold))


@dataclass(frozen=True)
class GenerationReport:
    """What :func:`evaluate_generation` measured: the answer metrics, the per-token dev ``loss`` and the
    ``(prompt, generated, gold)`` triples of the first rows (for printing)."""

    answers: AnswerMetrics
    loss: float | None
    samples: tuple[tuple[str, str, str], ...] = field(default=())

    @property
    def metrics(self) -> dict[str, float]:
        """The scalar metrics (``accuracy``, ``allowed_fraction`` when the task has answers, ``loss``)."""
        out = {"accuracy": self.answers.accuracy}
        if self.answers.allowed_fraction is not None:
            out["allowed_fraction"] = self.answers.allowed_fraction
        if self.loss is not None:
            out["loss"] = self.loss
        return out


def _progress(iterable: Any, enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise ConfigError(
            "the tokenizer has neither a pad nor an end-of-sequence token; set tokenizer.pad_token."
        )
    return int(pad)


def _prompt_tuning_active(model: nn.Module) -> bool:
    """Whether an active adapter is prompt tuning, whose soft tokens cannot follow a key/value cache (it then
    decodes without one: the same greedy answers, recomputed)."""
    store = getattr(model, "_adapterhub", None)
    if store is None or store.current_setup() is None:
        return False
    return any(getattr(a.config, "method", "") == "prompt_tuning" for a in store.adapters.values())


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 16,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to ``prompts`` (token ids ending with the assistant header), decoded without special
    tokens. Batches are left-padded (so every row's next token is at the last position) and the longest prompts
    go first; the answers come back in the prompts' order."""
    if not hasattr(model, "generate"):
        raise ConfigError(
            "the model cannot generate (no generate()); load a causal LM (AutoModelForCausalLM) for a generation task."
        )
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    try:
        for rows in _progress(batches, progress, desc="generate", unit="batch"):
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (batch, seq), left-padded
            mask = torch.zeros((len(rows), width), dtype=torch.long)  # (batch, seq)
            for row, index in enumerate(rows):
                prompt = list(prompts[index])
                ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
                mask[row, width - len(prompt) :] = 1
            output = model.generate(  # type: ignore[operator]
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
                eos_token_id=eos,
                use_cache=not _prompt_tuning_active(model),
            )  # (batch, seq + new)
            for row, index in enumerate(rows):
                answers[index] = tokenizer.decode(output[row, width:].tolist(), skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers


@torch.no_grad()
def response_loss(
    model: nn.Module, loader: Any, *, progress: bool = False, chunk_size: int = DEFAULT_CHUNK
) -> float | None:
    """Mean cross-entropy per loss-carrying token (labels other than -100, predicted from the position before)
    over every batch of ``loader`` (batches of :func:`adapterhub.training.chat_batches.collate_chat`); the LM
    head runs on ``chunk_size`` loss-carrying positions at a time (0: the full logits;
    :mod:`adapterhub.training.lm_loss`). A model whose logits the chunked loss cannot reproduce (e.g. a peft
    ``PeftModel``, or one that soft-caps its logits) is evaluated over the full logits, said once on stderr."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in _progress(loader, progress, desc="dev loss", unit="batch"):
            inputs = {
                "input_ids": batch["input_ids"].to(device),
                "attention_mask": batch["attention_mask"].to(device),
                "labels": batch["labels"].to(device),
            }
            labels = inputs["labels"]
            try:
                total += float(generation_loss(model, inputs, chunk_size=chunk_size, reduction="sum"))
            except ChunkedLossUnsupported as error:
                print(f"dev loss over the full logits: {str(error).split('; train it')[0]}", file=sys.stderr)
                chunk_size = 0
                total += float(generation_loss(model, inputs, chunk_size=0, reduction="sum"))
            targets = labels[:, 1:]
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return total / count if count else None


def evaluate_generation(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    answers: Sequence[str] = (),
    loss_loader: Any = None,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    adapters: bool = True,
    progress: bool = False,
    samples: int = 5,
    loss_chunk_size: int = DEFAULT_CHUNK,
) -> GenerationReport:
    """Generate an answer for each of ``examples`` (the conversation without its last assistant turn) and score
    it against that turn; ``loss_loader`` (optional) gives the per-token dev loss. Without task-wide ``answers``,
    rows that all carry their own allowed answers (``Example.choices``) are scored against those. ``adapters=False`` evaluates
    the base model alone (``model.adapter_setup(None)`` for this call). ``max_new_tokens`` defaults to the
    longest gold answer's token count plus 4; ``loss_chunk_size``: see
    :func:`response_loss`."""
    if not examples:
        raise ConfigError(
            "no dev rows to evaluate on; a generation task needs dev examples (--dev-limit > 0)."
        )
    prompts, gold = [], []
    for index, example in enumerate(examples):
        if not example.messages:
            raise ConfigError(
                f"dev example {index} has no messages; a generation example holds its conversation."
            )
        try:
            prompt = generation_prompt(tokenizer, example.messages)
        except ConfigError as error:
            raise ConfigError(f"dev example {index}: {error}") from None
        if prompt.reference is None:
            raise ConfigError(
                f"dev example {index} does not end with an assistant answer to compare against."
            )
        prompts.append(prompt.input_ids)
        gold.append(prompt.reference)
    if max_new_tokens is None:
        longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in gold)
        max_new_tokens = longest + 4
    setup = contextlib.nullcontext() if adapters else model.adapter_setup(None)  # type: ignore[operator]
    with setup:
        generated = generate_answers(
            model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
        )
        loss = (
            response_loss(model, loss_loader, progress=progress, chunk_size=loss_chunk_size)
            if loss_loader is not None
            else None
        )
    shown = tuple((example.text, generated[i], gold[i]) for i, example in enumerate(examples[:samples]))
    per_row = None
    if not answers and all(example.choices for example in examples):
        per_row = [tuple(example.choices or ()) for example in examples]
    return GenerationReport(answer_metrics(generated, gold, answers, per_row), loss, shown)


def format_samples(report: GenerationReport, width: int = 60) -> str:
    """A few generated answers beside the gold ones, one line each."""
    lines = []
    for prompt, generated, gold in report.samples:
        text = " ".join(prompt.split())
        text = text if len(text) <= width else "..." + text[-(width - 3) :]
        mark = "ok " if normalise(generated) == normalise(gold) else "   "
        lines.append(f"  {mark}gold {gold!r:14} generated {generated.strip()!r:24} | {text}")
    return "\n".join(lines)


def format_report(report: GenerationReport, label: str = "") -> str:
    """One line of figures: accuracy, allowed fraction, the spread, majority rate, loss."""
    a = report.answers
    parts = [f"accuracy {a.accuracy:.4f}"]
    if a.allowed_fraction is not None:
        parts.append(f"allowed {a.allowed_fraction:.4f}")
        parts.append("answers " + ", ".join(f"{k} {v}" for k, v in a.answer_counts.items()))
    parts.append(f"majority rate {a.majority_rate:.4f}")
    if report.loss is not None:
        parts.append(f"dev loss/token {report.loss:.4f}")
    return (f"{label}: " if label else "") + " | ".join(parts) + f" ({a.examples} dev rows)"
