"""Length-grouped batching: less padding per batch, same examples per epoch.

Batches are padded to their longest row (:func:`adapterhub.data.collate`), so a batch that mixes a 10-token and
a 120-token sentence computes 110 padding positions for the short one. :class:`LengthGroupedSampler` keeps the
epoch's shuffle but groups rows of similar length into the same batch: it draws a seeded random permutation of
the dataset, cuts it into mega-batches of ``mega_batches * batch_size`` rows, sorts each mega-batch by length
(longest first) and yields the indices in that order; the data loader then cuts consecutive ``batch_size``
slices. Every example is seen exactly once per epoch; which examples share a batch is still random up to the
sort inside a mega-batch (the same scheme as the transformers Trainer's ``group_by_length``).

:func:`length_sorted_indices` orders a dev set longest-first for evaluation, where the order does not matter
for the metrics (predictions are collected with their labels).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from adapterhub.data import EncodedDataset
from adapterhub.errors import ConfigError


def example_lengths(dataset: EncodedDataset) -> list[int]:
    """Tokens per example (the longest choice for multiple choice)."""
    lengths = []
    for feature in dataset.features:
        ids = feature["input_ids"]
        lengths.append(max(len(choice) for choice in ids) if ids and isinstance(ids[0], list) else len(ids))
    return lengths


class LengthGroupedSampler(Sampler[int]):
    """Seeded shuffle, then longest-first within each mega-batch of ``mega_batches * batch_size`` indices.

    ``generator`` may be replaced between epochs (the training loop reseeds it with ``seed + epoch``).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        mega_batches: int = 50,
    ) -> None:
        if batch_size < 1 or mega_batches < 1:
            raise ConfigError(
                f"batch_size and mega_batches must be at least 1, got {batch_size} and {mega_batches}."
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.mega_batches = mega_batches
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.batch_size * self.mega_batches
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            yield from sorted(chunk, key=lambda index: -self.lengths[index])


def length_sorted_indices(dataset: EncodedDataset) -> list[int]:
    """Indices of ``dataset`` longest first (stable for equal lengths)."""
    lengths = example_lengths(dataset)
    return sorted(range(len(lengths)), key=lambda index: -lengths[index])
