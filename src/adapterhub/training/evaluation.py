"""Batches and evaluation over them: ``make_loader`` (seeded, optionally length-grouped or distributed batches),
``evaluate_model`` (a classification-kind model's metrics over a loader), the progress bar and device moves the
training loop shares."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from adapterhub.data import EncodedDataset, collate
from adapterhub.errors import ConfigError
from adapterhub.training import distributed
from adapterhub.training.metrics import compute_metrics
from adapterhub.training.modeling import forward_batch
from adapterhub.training.resources import autocast
from adapterhub.training.sampling import LengthGroupedSampler, example_lengths, length_sorted_indices

__all__ = ["evaluate_model", "make_loader", "progress_iter", "to_device"]


def progress_iter(iterable: Any, enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


def make_loader(
    dataset: EncodedDataset,
    tokenizer: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    info: distributed.DistInfo | None = None,
    group_by_length: bool = False,
    collate_fn: Callable[[Sequence[Any], Any], dict[str, torch.Tensor]] = collate,
) -> DataLoader[Any]:
    """Batches of ``dataset`` padded per batch by ``collate_fn(items, tokenizer)``; shuffled with a seeded
    generator (or a seeded ``DistributedSampler`` when running distributed). ``group_by_length``: shuffled
    batches hold rows of similar length (:class:`LengthGroupedSampler`), unshuffled ones go longest first."""
    sampler: Any
    if shuffle and info is not None and info.enabled:
        if group_by_length:
            raise ConfigError(
                "group_by_length is not available with distributed training yet; leave it off under torchrun."
            )
        sampler = DistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
        )
    elif shuffle and group_by_length:
        sampler = LengthGroupedSampler(
            example_lengths(dataset), batch_size, generator=torch.Generator().manual_seed(seed)
        )
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    elif group_by_length:
        sampler = length_sorted_indices(dataset)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=lambda items: collate_fn(items, tokenizer)
    )


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader[Any],
    kind: str,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Metrics of ``model`` (an adapterhub model with its head active) over every batch of ``loader``; the model
    is left in the train/eval mode it was in."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    all_logits: list[torch.Tensor] = []
    all_labels: list[torch.Tensor] = []
    losses: list[float] = []
    try:
        for batch in progress_iter(loader, progress, desc="eval", unit="batch"):
            batch = to_device(batch, device)
            if "labels" not in batch:
                raise ConfigError("the evaluation data has no labels; evaluation needs labelled examples.")
            with autocast(device, dtype):
                loss, logits = forward_batch(model, batch, kind)
            all_logits.append(logits.float().cpu())
            all_labels.append(batch["labels"].cpu())
            if loss is not None:
                losses.append(float(loss) * len(batch["labels"]))
    finally:
        model.train(was_training)
    if not all_logits:
        return {}
    labels = torch.cat(all_labels)
    metrics = compute_metrics(kind, _cat_logits(all_logits), labels)
    if losses:
        metrics["loss"] = sum(losses) / len(labels)
    return metrics


def _cat_logits(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch logits (rows, width) along rows. Multiple-choice batches are padded to their own most
    choices, so narrower ones are widened with the float32 minimum: a padded choice is never the argmax."""
    width = max(part.shape[-1] for part in parts)
    if all(part.shape[-1] == width for part in parts) or parts[0].dim() != 2:
        return torch.cat(parts)
    low = torch.finfo(torch.float32).min
    return torch.cat([nn.functional.pad(part, (0, width - part.shape[-1]), value=low) for part in parts])
