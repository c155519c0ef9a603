"""A packed forward: several sequences' new tokens in ONE row ``(1, T)``, each contiguous run of tokens (a
*segment*) with its own adapter setup, its own positions and attention only within itself.

``PackedRow(setups, lengths, cached)`` describes the row: segment ``i`` holds ``lengths[i]`` new tokens of a sequence
that already has ``cached[i]`` tokens in the key/value cache, run under ``setups[i]`` (a name, a ``Stack`` /
``Average`` of names, or None for the base model alone). It gives:

- ``setup``: the per-call setup for the row, a ``Split`` over token positions (``Split`` runs each child on its
  slice of positions at every attachment point, a ``None`` child's slice keeps the base value); adjacent segments
  with the same setup are merged into one slice, so a row ordered adapter by adapter costs one adapter computation
  per adapter and point. Give it to ``model.adapter_setup(...)``: like every per-call setup it lives in the calling
  thread's (or task's) context for that call (the store's override, a context variable), never on the model, so
  the thread that runs the forward (the engine's stepping thread) must enter it;
- ``position_ids`` ``(1, T)``: ``cached[i] + k`` for the ``k``-th new token of segment ``i`` (positions restart per
  sequence);
- ``attention_mask(dtype)`` ``(1, 1, T, C + T)`` with ``C = Σ cached``: an additive 4-D mask (0 visible, the dtype's
  minimum hidden) for keys laid out as every sequence's cached keys in segment order, then the ``T`` new keys. A
  query of sequence ``i`` at position ``q`` sees a key of sequence ``j`` at position ``p`` iff ``i == j`` and
  ``p <= q``: block-diagonal causal attention. transformers passes a 4-D mask to eager / SDPA attention as it is;
- ``last`` ``(S,)``: each segment's last token index in the row (where its next-token logits are).

A method whose adapters cannot run on a slice of a row's tokens (prefix tuning: its keys and values join the
attention of the whole row; prompt tuning: its soft prompt is prepended to the row) is refused by
``check_packable`` with the method's own reason (``AdapterModule.packed_refusal``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from adapterhub.errors import ConfigError
from adapterhub.methods.base import AdapterModule
from adapterhub.spec.composition import Setup, Split, setup_names

PACKED_ATTENTION = frozenset({"eager", "sdpa"})  # implementations that take an explicit 4-D additive mask


@dataclass(frozen=True)
class PackedRow:
    """Segments of one packed row: ``setups[i]`` runs on ``lengths[i]`` new tokens continuing ``cached[i]`` cached
    ones (see the module docstring)."""

    setups: tuple[Setup | None, ...]
    lengths: tuple[int, ...]
    cached: tuple[int, ...]

    def __init__(
        self, setups: Sequence[Setup | None], lengths: Sequence[int], cached: Sequence[int] | None = None
    ) -> None:
        cached = [0] * len(lengths) if cached is None else list(cached)
        if not (len(setups) == len(lengths) == len(cached)) or not lengths:
            raise ConfigError(
                f"A packed row needs one setup, one length and one cached count per segment, got {len(setups)} "
                f"setups, {len(lengths)} lengths and {len(cached)} cached counts."
            )
        if any(not isinstance(n, int) or n < 1 for n in lengths) or any(c < 0 for c in cached):
            raise ConfigError(
                f"Packed segment lengths must be positive and cached counts non-negative, got lengths "
                f"{list(lengths)} and cached {list(cached)}."
            )
        object.__setattr__(self, "setups", tuple(setups))
        object.__setattr__(self, "lengths", tuple(int(n) for n in lengths))
        object.__setattr__(self, "cached", tuple(int(c) for c in cached))

    @property
    def total(self) -> int:
        """``T``: new tokens in the row."""
        return sum(self.lengths)

    @property
    def starts(self) -> list[int]:
        """Each segment's first token index in the row."""
        out, at = [], 0
        for n in self.lengths:
            out.append(at)
            at += n
        return out

    @property
    def setup(self) -> Setup | None:
        """The per-call setup: a ``Split`` over positions, adjacent equal setups merged (one setup: itself)."""
        children: list[Setup | None] = []
        sizes: list[int] = []
        for setup, n in zip(self.setups, self.lengths, strict=True):
            if children and children[-1] == setup:
                sizes[-1] += n
            else:
                children.append(setup)
                sizes.append(n)
        if len(children) == 1:
            return children[0]
        edges = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        return Split(*children, split_index=edges)  # type: ignore[arg-type]

    def position_ids(self, device: torch.device | None = None) -> torch.Tensor:
        """``(1, T)``: the true position of every new token in its own sequence."""
        parts = [torch.arange(c, c + n) for c, n in zip(self.cached, self.lengths, strict=True)]
        return torch.cat(parts).unsqueeze(0).to(device)  # (1, T)

    def key_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sequence, position)`` of every key, ``(C + T,)`` each: the cached keys in segment order, then the new."""
        segments = range(len(self.lengths))
        seq = [torch.full((c,), i) for i, c in zip(segments, self.cached, strict=True)]
        seq += [torch.full((n,), i) for i, n in zip(segments, self.lengths, strict=True)]
        pos = [torch.arange(c) for c in self.cached]
        pos += [torch.arange(c, c + n) for c, n in zip(self.cached, self.lengths, strict=True)]
        return torch.cat(seq), torch.cat(pos)

    def attention_mask(self, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
        """``(1, 1, T, C + T)`` additive mask: 0 where a query may see a key (same sequence, not later), else the
        dtype's minimum."""
        key_seq, key_pos = self.key_layout()  # (C + T,)
        total = self.total
        query_seq, query_pos = key_seq[-total:], key_pos[-total:]  # (T,)
        visible = (query_seq[:, None] == key_seq[None, :]) & (
            key_pos[None, :] <= query_pos[:, None]
        )  # (T, C+T)
        mask = torch.zeros(visible.shape, dtype=dtype)
        mask.masked_fill_(~visible, torch.finfo(dtype).min)
        return mask[None, None].to(device)  # (1, 1, T, C + T)

    def last(self, device: torch.device | None = None) -> torch.Tensor:
        """``(S,)``: each segment's last token index in the row."""
        return torch.tensor(
            [s + n - 1 for s, n in zip(self.starts, self.lengths, strict=True)], device=device
        )


def check_packable(setup: Setup | None, adapters: Mapping[str, AdapterModule]) -> None:
    """Raise a ConfigError naming the adapter, its method and the reason when ``setup`` cannot run on a slice of a
    packed row's tokens: every adapter in it must be allowed in ``Split`` (per-position slices)."""
    for name in setup_names(setup):
        if name not in adapters:  # a ModuleDict has no .get; unknown names are the setup check's to name
            continue
        module = adapters[name]
        if "Split" in module.composable:
            continue
        reason = module.packed_refusal or (
            f"its method runs on whole rows (it composes with {', '.join(sorted(module.composable))}, not Split)"
        )
        raise ConfigError(
            f"Adapter {name!r} ({module.method}) cannot run in a packed forward, where sequences share one row and "
            f"each adapter runs on its own tokens only: {reason}. Run it unpacked (one row per sequence: "
            "BatchSplit; the generation engine with packed=False, or its default packed=None, which runs the steps "
            "holding it so)."
        )


def check_packed_model(model: object) -> None:
    """A packed forward needs an attention implementation that takes the 4-D block-diagonal mask as it is."""
    config = getattr(model, "config", None)
    impl = str(getattr(config, "_attn_implementation", None) or "eager").removeprefix("adapterhub_")
    if impl not in PACKED_ATTENTION:
        raise ConfigError(
            f"A packed forward needs attn_implementation 'sdpa' or 'eager' (it gives attention a 4-D "
            f"block-diagonal mask); this model uses {impl!r}. Call model.set_attn_implementation('sdpa') or run "
            "unpacked."
        )
