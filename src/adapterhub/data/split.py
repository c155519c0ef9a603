"""Seeded train/dev splits."""

from __future__ import annotations

import random

from adapterhub.errors import ConfigError


def dev_size(total: int, fraction: float) -> int:
    """How many of ``total`` rows go to dev: ``round(total * fraction)``, kept within ``1 .. total - 1``.

    Raises :class:`ConfigError` if ``fraction`` is not strictly between 0 and 1 or there are fewer than 2 rows.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise ConfigError(f"dev_split_fraction must be a number strictly between 0 and 1, got {fraction!r}")
    if total < 2:
        raise ConfigError(
            f"cannot split {total} row(s) into train and dev; add rows or provide a separate dev file"
        )
    return min(max(1, round(total * fraction)), total - 1)


def split_indices(total: int, dev_count: int, seed: int) -> tuple[list[int], list[int]]:
    """Shuffle ``range(total)`` with ``random.Random(seed)``; the first ``dev_count`` go to dev, the rest to train.

    Returns ``(train_indices, dev_indices)``, each in shuffled order. The same arguments always give the same
    split (the shuffle is Python's documented Mersenne Twister ``shuffle``).
    """
    if not 0 <= dev_count <= total:
        raise ConfigError(f"dev size {dev_count} is not between 0 and the number of rows ({total})")
    order = list(range(total))
    random.Random(seed).shuffle(order)
    return order[dev_count:], order[:dev_count]
