"""Linear warm-up then linear decay of the learning rate, as a factor of the peak rate per optimizer update."""

from __future__ import annotations

import math

import torch


def warmup_steps_for(total_steps: int, warmup_ratio: float, warmup_steps: int | None) -> int:
    """``warmup_steps`` if given, else ``ceil(warmup_ratio * total_steps)``; never more than ``total_steps``."""
    count = warmup_steps if warmup_steps is not None else math.ceil(warmup_ratio * total_steps)
    return max(0, min(count, total_steps))


def linear_factor(step: int, warmup: int, total: int) -> float:
    """Factor of the peak learning rate used by update number ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup`` for ``step < warmup``, so the last warm-up update runs at the peak rate and
    no update runs at zero; then ``(total - step) / (total - warmup)``, falling linearly to ``1 / (total -
    warmup)`` at the last update."""
    if step < warmup:
        return (step + 1) / warmup
    remaining = total - warmup
    if remaining <= 0:
        return 1.0
    return max(0.0, (total - step) / remaining)


def linear_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`linear_factor`; call ``scheduler.step()`` after each ``optimizer.step()``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: linear_factor(step, warmup, total))
