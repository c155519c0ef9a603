"""Speech recognition metrics and greedy CTC decoding, on plain Python sequences.

Word error rate and character error rate are corpus-level: the Levenshtein distance (substitutions + deletions
+ insertions, each costing 1) between each reference and its hypothesis, summed over the rows, divided by the
total length of the references,

    WER = sum_i d(words(ref_i), words(hyp_i)) / sum_i |words(ref_i)|
    CER = sum_i d(chars(ref_i), chars(hyp_i)) / sum_i |chars(ref_i)|

with ``words(s) = s.split()`` and ``chars(s)`` every character of ``s`` (spaces included), as ``jiwer`` and
``evaluate``'s ``wer`` / ``cer`` compute them. Both can exceed 1 (more insertions than reference words).

Greedy CTC decoding (:func:`ctc_collapse`): per frame the most likely id, then runs of one id merged into one,
then the blank id dropped; ``a a _ a b`` -> ``a a b`` (a blank between two equal ids keeps both).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from adapterhub.errors import ConfigError


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """The Levenshtein distance between two sequences (one row of the dynamic programme kept at a time)."""
    previous = list(range(len(hypothesis) + 1))  # distances from reference[:0] to hypothesis[:j]
    for i, ref in enumerate(reference, start=1):
        current = [i]
        for j, hyp in enumerate(hypothesis, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (0 if ref == hyp else 1))
            )
        previous = current
    return previous[-1]


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """``{"wer": ..., "cer": ...}`` of ``hypotheses`` against ``references`` (same length, non-empty total)."""
    if len(references) != len(hypotheses):
        raise ConfigError(
            f"{len(references)} references but {len(hypotheses)} hypotheses; pair them one to one."
        )
    words = sum(len(ref.split()) for ref in references)
    chars = sum(len(ref) for ref in references)
    if not words or not chars:
        raise ConfigError("the references are empty; WER and CER need at least one reference word.")
    word_errors = sum(
        edit_distance(r.split(), h.split()) for r, h in zip(references, hypotheses, strict=True)
    )
    char_errors = sum(edit_distance(r, h) for r, h in zip(references, hypotheses, strict=True))
    return {"wer": word_errors / words, "cer": char_errors / chars}


def ctc_collapse(ids: Sequence[int], blank: int) -> list[int]:
    """Greedy CTC output of a frame-wise best-id sequence: repeats merged, then blanks dropped."""
    kept: list[int] = []
    last: int | None = None
    for token in ids:
        if token != last and token != blank:
            kept.append(int(token))
        last = token
    return kept
