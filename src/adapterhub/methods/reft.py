"""ReFT (Wu et al. 2024, "ReFT: Representation Finetuning for Language Models"): LoReFT, NoReFT and DiReFT as the
`adapters` library 1.3 computes them (``adapters.methods.reft``).

At each chosen layer, the layer's output ``z`` ``(batch, seq, d)`` is intervened on at the first ``p`` and the last
``s`` non-padding positions of every row (``p`` / ``s``: ``prefix_positions`` / ``suffix_positions``). One
intervention (a "unit") maps each chosen position's vector ``x`` ``(d,)`` to::

    u  = f(W x + b)          W: (r, d), b: (r,), f: non_linearity (identity when None)
    u  = u - R x             (subtract_projection; R: (r, d), orthonormal rows under ``orthogonality``)
    x' = dropout(x + Rᵀ u)   (dropout acts on the whole x' while training, as that library does)

With ``tied_weights`` one unit serves prefix and suffix positions; otherwise unit 0 the prefix, unit 1 the suffix
(both are built even when ``p`` or ``s`` is 0, as there). Parameters per layer: ``(2 r d + r)`` per unit.

Positions, per call (``CallPositions``: the call's attention mask, recorded when the call starts, never stored on
the model): ``first = argmax(mask)`` (the first 1 of the row) and ``last = first + Σ mask``; without a mask
``first = 0``, ``last = seq``. The prefix is ``first + [0, min(p, seq))``, the suffix ``last + [-min(s, seq), 0)``;
where both meet, the suffix's value is written last (wins). As there, the prefix of a right-padded row shorter than
``p`` reaches into its padding; positions outside the row (a left-padded row shorter than ``p``, a right-padded
row shorter than ``s``) raise a ``ConfigError`` (that library fails with an index error).

A row whose tokens are not one run of 1s in the mask (gaps between them) is refused.

Cached decoding (the call's cache already holds ``past`` positions, its mask covers ``past + seq``) follows the
ReFT paper's generation: the interventions belong to the prompt, which is the first call's tokens (the call without
a cache). The prefix is a row's first ``p`` tokens counted over cached and new positions (the 1s of the mask, gaps
allowed, as in the step batches of adapterhub's generation engine), so a step intervenes exactly where a forward
over the whole sequence without cache would (every generated token lies past the prefix unless the prompt is
shorter than ``p``); the suffix is the prompt's last ``s`` tokens, intervened on while the prompt is computed and
kept in the cache, so a decode step (one new token, past the prompt) gets no suffix intervention. A cached call of
several new tokens with ``s > 0`` (a prompt fed in pieces) is refused: the prompt's end is unknown there. (The
`adapters` library instead intervenes on every new token during cached decoding and fails under left padding or
with suffix positions; without a cache, ``generate(use_cache=False)``, every step recomputes the whole sequence and
the suffix is the last ``s`` tokens of the sequence so far, as in that library.)

Per-row positions (``CallPositions.rank`` / ``prompt``, given by a caller whose rows are different sequences: the
generation engine): each computed position's index ``k`` among its sequence's tokens and that sequence's prompt
length ``L`` (per row, or per position for a packed row holding several sequences); ``k < p`` gets the prefix unit,
``L - s <= k < L`` the suffix unit (written last) -- for a row of one unpadded sequence the same positions as above,
whatever its cache length, padding or prompt chunking. That library's scatter misplaces values when a prompt is
shorter than ``s`` and ``p > 0`` (``prompt_refusal`` says so before such a row runs with per-row positions).

Attachment: the residual point ``ffn`` (the layer's last sub-layer: its value is the layer's output) of every
chosen layer. Post-norm models (BERT): the point's output ``LN(h + x)`` is replaced by its intervened value;
pre-norm models (Llama, GPT-2), where the layer adds ``h`` to the residual itself: ``h`` becomes
``h + (z' - z)`` with ``z = h + residual``, zero away from the chosen positions.

Composition: a ReFT adapter runs alone at its point. In a Stack its companions must sit at other points (LoRA,
prefix tuning, ...); in a BatchSplit it runs on its own rows, positions counted per row (the generation engine
groups its rows so; the `adapters` library applies the setup's first adapter to every row there); in a Split it
runs on its slice of positions when the call's positions are given per position (``CallPositions.rank``, sliced
along: the packed generation engine's row, one slice per adapter), and refuses a call without them (a slice of an
ordinary row holds neither the row's first nor its last token). Fuse, Parallel and Average are refused
(``refuse_in`` says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    RESIDUAL,
    AdapterModule,
    CallPositions,
    ModelDims,
    Point,
    PointInputs,
    ResidualInputs,
    register_method,
)
from adapterhub.methods.bottleneck import make_activation
from adapterhub.spec.configs.reft import ReftConfig

POINT = "ffn"  # the residual point whose value is the layer's output

_REASONS = {
    "Fuse": "Fuse mixes the outputs of bottleneck adapters; a ReFT intervention rewrites positions of the layer "
    "output and has no output to mix.",
    "Parallel": "the `adapters` library applies the first adapter of the setup to every branch there (a ReFT "
    "adapter would intervene on the rows of the other branches too); adapterhub refuses rather than compute that. "
    "Run the ReFT adapter alone, or in a Stack with adapters at other points.",
    "Average": "the `adapters` library has no Average of ReFT interventions (its hook runs only the setup's first "
    "adapter). Run the ReFT adapter alone, or in a Stack with adapters at other points.",
}


class ReftUnit(nn.Module):
    """One intervention ``x -> dropout(x + Rᵀ(f(W x + b) - R x))`` (without ``- R x`` when not subtracting).

    ``learned_source``: ``W``, ``b`` (``nn.Linear(d, r)``); ``projection``: ``R`` (``nn.Linear(d, r)`` without
    bias), under torch's orthogonal parametrization when ``orthogonal`` (its state: ``parametrizations.weight.
    original`` and ``parametrizations.weight.0.base``, the names that library saves)."""

    def __init__(self, config: ReftConfig, hidden: int) -> None:
        super().__init__()
        self.learned_source = nn.Linear(hidden, config.r)
        projection: nn.Module = nn.Linear(hidden, config.r, bias=False)
        if config.orthogonality:
            if (
                projection.weight.device.type == "meta"
            ):  # the parametrization needs values to set up its ``base``
                projection = projection.to_empty(device="cpu")
            projection = nn.utils.parametrizations.orthogonal(projection)
        self.projection = projection
        self.subtract = config.subtract_projection
        self.activation = make_activation(config.non_linearity or "identity")
        self.dropout = nn.Dropout(config.dropout)

    def _apply(self, fn: Any, recurse: bool = True) -> ReftUnit:
        """As ``nn.Module._apply``, but an orthogonal ``R`` stays float32 when the rest goes to half precision
        (torch's orthogonal parametrization has no half-precision kernels; that library does the same)."""
        super()._apply(fn, recurse)
        original = getattr(getattr(self.projection, "parametrizations", None), "weight", None)
        if original is not None and original.original.dtype in (torch.float16, torch.bfloat16):
            self.projection.float()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, n, d)
        source = self.activation(self.learned_source(x))  # (batch, n, r)
        projected: torch.Tensor = self.projection.weight  # type: ignore[assignment]  # (r, d)
        weight = projected.to(x.dtype)  # (r, d)
        if self.subtract:
            source = source - x @ weight.T  # (batch, n, r)
        return self.dropout(x + source @ weight)  # (batch, n, d)


class ReftLayer(nn.Module):
    """The interventions of one layer: ``units`` (one when tied, else prefix and suffix)."""

    def __init__(self, config: ReftConfig, hidden: int) -> None:
        super().__init__()
        count = 1 if config.tied_weights else 2
        self.units = nn.ModuleList([ReftUnit(config, hidden) for _ in range(count)])


def _call_mask(positions: CallPositions | None, rows: int, length: int) -> tuple[torch.Tensor | None, int]:
    """``(mask, past)`` of the call, checked against the layer output's ``rows`` and ``length``: the 2D attention
    mask over ``past + length`` positions (None when the call passed none) and the cached positions ``past``."""
    if positions is None:
        raise ConfigError(
            "ReFT reads each call's attention mask, which adapterhub records when the whole model is called; this "
            "layer ran without it (a sub-module called on its own?). Call the model that adapterhub.init wrapped."
        )
    mask, past = positions.mask, positions.past
    if mask is None:
        return None, past
    if mask.shape[0] != rows:
        raise ConfigError(
            f"ReFT counts positions per row from the call's attention mask ({mask.shape[0]} rows), but its layer "
            f"output has {rows} rows (a setup that replicates the batch, e.g. Parallel, cannot hold ReFT). Run "
            "the ReFT adapter alone or in a Stack."
        )
    if mask.shape[1] != past + length:
        raise ConfigError(
            f"ReFT reads positions from the call's attention mask, which covers {mask.shape[1]} positions, but the "
            f"layer computes {length} positions after {past} cached ones. Pass an attention mask of shape "
            "(batch, cached + new positions) (as generate() does), and do not combine ReFT with adapters that "
            "add positions (prompt tuning)."
        )
    return mask == 1, past


def _bounds(mask: torch.Tensor | None, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, last)``, ``(rows,)`` each: a row's first non-padding position and one past its last (that
    library's ``argmax`` of the mask and ``argmax + Σ mask``); a row whose tokens are not one run is refused."""
    if mask is None:
        first = torch.zeros(rows, dtype=torch.long)
        return first, first + length
    first = mask.int().argmax(dim=1)  # (rows,) the first 1 of each row
    count = mask.sum(dim=1)  # (rows,)
    end = length - mask.flip(1).int().argmax(dim=1)  # (rows,) one past the last 1
    gaps = (count > 0) & (end - first != count)
    if bool(gaps.any()):
        row = int(gaps.nonzero()[0, 0])
        raise ConfigError(
            f"ReFT counts its positions from each row's first and last token, but row {row} of the attention mask "
            f"has gaps between its tokens ({mask[row].int().tolist()}); pad rows on one side only."
        )
    return first, first + count


@register_method("reft")
class ReftAdapter(AdapterModule):
    """ReFT interventions on the outputs of the chosen layers: ``layers[str(i)]`` holds layer ``i``'s units."""

    config_cls = ReftConfig
    config: ReftConfig
    composable: ClassVar[frozenset[str]] = frozenset({"Stack", "BatchSplit", "Split"})
    reads_positions: ClassVar[bool] = True

    def __init__(self, name: str, config: ReftConfig, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        if POINT not in dims.residual_points:
            raise ConfigError(
                f"ReFT intervenes on each layer's output, which adapterhub reaches at the residual point {POINT!r}; "
                f"this {dims.model_type} model has residual points {list(dims.residual_points) or 'none'}."
            )
        if dims.decoder_start is not None:
            raise ConfigError(
                f"ReFT on an encoder-decoder model ({dims.model_type}) is not supported: its decoder layers would "
                "need the decoder's own positions, but the call's attention mask is the encoder's (the `adapters` "
                "library reads the encoder's mask there too). Use ReFT on encoder-only or decoder-only models."
            )
        if isinstance(config.layers, tuple) and max(config.layers) >= dims.num_layers:
            raise ConfigError(
                f"layers={list(config.layers)} names layers the model does not have: it has {dims.num_layers} "
                f"(indices 0..{dims.num_layers - 1})."
            )
        self.layers = nn.ModuleDict(
            {
                str(i): ReftLayer(config, dims.hidden_size)
                for i in range(dims.num_layers)
                if config.intervenes_at(i) and dims.has_point(i, POINT)
            }
        )

    def points(self, layer: int) -> tuple[Point, ...]:
        return ((RESIDUAL, POINT),) if str(layer) in self.layers else ()

    def kinds(self) -> frozenset[str]:
        return frozenset({RESIDUAL})

    def refuse_in(self, block: str, others: Sequence[AdapterModule]) -> str | None:
        """Outside a Stack, a BatchSplit (each child on its own rows) and a Split (each child on its own positions,
        which need per-position ``CallPositions``: checked per call): the block's reason (``_REASONS``); in a Stack:
        an adapter that also sits at a chosen layer's output (the order of two changes of one output has no
        counterpart in that library, whose ReFT hook runs after every other adapter of the layer and only when ReFT
        comes first in the setup)."""
        if block in ("BatchSplit", "Split"):
            return None
        if block != "Stack":
            return _REASONS.get(block)
        layers = [int(i) for i in self.layers]
        for other in others:
            if any(other.present(i, RESIDUAL, POINT) for i in layers):
                return (
                    f"{other.adapter_name!r} ({other.method}) also changes the output of the layers where ReFT "
                    f"adapter {self.adapter_name!r} intervenes; a ReFT adapter must be the only adapter at those "
                    "layer outputs. Stack it with adapters at other points (LoRA, prefix tuning)."
                )
        return None

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> Any:
        """The intervention is the point's value (``stack_leave``); ``refuse_in`` keeps other adapters away from
        this point, so the running value is still the point's start."""
        assert isinstance(inputs, ResidualInputs)
        if running is not inputs.start():
            raise ConfigError(
                f"ReFT adapter {self.adapter_name!r} must be the only adapter at the output of layer {layer}."
            )
        return running

    def stack_leave(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> torch.Tensor:
        """The point's output with the layer output ``z`` intervened on (see the module docstring)."""
        assert isinstance(inputs, ResidualInputs)
        z = inputs.original_output()  # (batch, seq, d) the layer's output
        changed = self.intervene(layer, z, inputs.positions)
        if inputs.norm is not None:  # post-norm: the point's output is the layer's output
            return changed
        return inputs.h + (changed - z)  # pre-norm: the layer adds the residual to h

    def intervene(self, layer: int, z: torch.Tensor, positions: CallPositions | None) -> torch.Tensor:
        """``z`` ``(batch, seq, d)`` with the chosen positions of each row replaced by their units' values."""
        rows, length, _ = z.shape
        if positions is not None and positions.rank is not None:
            return self._by_rank(units_of(self, layer), z, positions)
        if positions is not None and positions.sliced:
            raise ConfigError(
                f"ReFT adapter {self.adapter_name!r} runs on a Split's slice of positions, but the call gave no "
                "positions per position (CallPositions.rank), and a slice holds neither its row's first nor its last "
                "token. Use BatchSplit (a block of rows per adapter), or generate with "
                "GenerationEngine(packed=True), which gives each token's position in its own sequence."
            )
        mask, past = _call_mask(positions, rows, length)
        mask = None if mask is None else mask.to(z.device)
        units = units_of(self, layer)
        if past > 0:
            return self._decode_step(units, z, mask, past)
        first, last = (bound.to(z.device) for bound in _bounds(mask, rows, length))
        return self._gather_scatter(units, z, first, last)

    def _gather_scatter(
        self, units: nn.ModuleList, z: torch.Tensor, first: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        p, s = self.config.prefix_positions, self.config.suffix_positions
        rows, length, hidden = z.shape
        steps = torch.arange(length, device=z.device)
        prefix_index = first[:, None] + steps[: min(p, length)]  # (rows, min(p, seq))
        suffix_index = last[:, None] + (steps[: min(s, length)] - min(s, length))  # (rows, min(s, seq))
        for what, index in (("prefix", prefix_index), ("suffix", suffix_index)):
            outside = (index < 0) | (index >= length)
            if bool(outside.any()):
                row = int(outside.any(dim=1).nonzero()[0, 0])
                raise ConfigError(
                    f"ReFT adapter {self.adapter_name!r}: the {what} positions of row {row} "
                    f"({index[row].tolist()}) fall outside its sequence of {length} positions (tokens "
                    f"{int(first[row])}..{int(last[row]) - 1}): the row is shorter than prefix_positions={p} / "
                    f"suffix_positions={s} allow under its padding. Pad the other side, or lower them."
                )
        prefix_at = prefix_index[..., None].expand(-1, -1, hidden)  # (rows, p', d)
        suffix_at = suffix_index[..., None].expand(-1, -1, hidden)  # (rows, s', d)
        prefix = z.gather(1, prefix_at) if p > 0 else z.new_zeros(rows, 0, hidden)
        suffix = z.gather(1, suffix_at) if s > 0 else z.new_zeros(rows, 0, hidden)
        states = [torch.cat([prefix, suffix], dim=1)] if len(units) == 1 else [prefix, suffix]
        adapted = torch.cat([unit(x) for unit, x in zip(units, states, strict=True)], dim=1).to(z.dtype)
        out = z
        if p > 0:
            out = torch.scatter(out, 1, prefix_at, adapted[:, :p])
        if s > 0:  # written last: where prefix and suffix meet, the suffix's value stays (as that library)
            out = torch.scatter(out, 1, suffix_at, adapted[:, -s:])
        return out

    def _decode_step(
        self, units: nn.ModuleList, z: torch.Tensor, mask: torch.Tensor | None, past: int
    ) -> torch.Tensor:
        """Cached decoding: the positions of this step whose rank among their row's tokens (the 1s of the mask,
        counted over cached and new positions) is below ``prefix_positions`` get unit 0; a new token lies past the
        prompt, so no suffix position is among them."""
        p, s = self.config.prefix_positions, self.config.suffix_positions
        if s > 0 and z.shape[1] > 1:
            raise ConfigError(
                f"ReFT adapter {self.adapter_name!r} intervenes on the last {s} positions of the prompt, which "
                "adapterhub takes to be the first call's tokens (without a cache); this cached call computes "
                f"{z.shape[1]} new positions, so where the prompt ends is unknown. Feed the whole prompt in one call "
                "(as generate() does), or use suffix_positions=0."
            )
        rows, length, _ = z.shape
        if mask is None:  # no padding: the step's positions are past .. past + length - 1
            chosen = (torch.arange(past, past + length, device=z.device) < p).expand(rows, length)
        else:
            rank = (
                mask.long().cumsum(dim=1)[:, past:] - 1
            )  # (rows, seq) tokens of the row before each position
            chosen = mask[:, past:] & (rank < p)  # (rows, seq)
        if not bool(chosen.any()):
            return z
        return torch.where(chosen[..., None], units[0](z).to(z.dtype), z)  # (rows, seq, d)

    def _by_rank(self, units: nn.ModuleList, z: torch.Tensor, positions: CallPositions) -> torch.Tensor:
        """Per-row positions: position ``k`` of a row (``positions.rank``) gets the prefix unit when ``k < p``, the
        suffix unit (written last) when ``L - s <= k < L`` (``L``: ``positions.prompt``, the row's or, given per
        position, that position's sequence's)."""
        rank, prompt = positions.rank, positions.prompt
        assert rank is not None
        rows, length, _ = z.shape
        if (
            prompt is None
            or tuple(rank.shape) != (rows, length)
            or tuple(prompt.shape) not in ((rows,), (rows, length))
        ):
            raise ConfigError(
                f"ReFT adapter {self.adapter_name!r} got per-row positions of shape "
                f"{tuple(rank.shape)} (prompt lengths: {None if prompt is None else tuple(prompt.shape)}) for a "
                f"layer output of {rows} rows x {length} positions; give rank (rows, positions) and prompt (rows,) "
                "or (rows, positions)."
            )
        p, s = self.config.prefix_positions, self.config.suffix_positions
        rank = rank.to(z.device)  # (rows, seq) -1 on padding
        end = prompt.to(z.device)  # (rows,) or (rows, seq)
        end = end[:, None] if end.dim() == 1 else end  # (rows, 1 | seq)
        real = rank >= 0
        prefix = real & (rank < p)  # (rows, seq)
        suffix = real & (rank >= end - s) & (rank < end)  # (rows, seq)
        out = z
        if p > 0 and bool(prefix.any()):
            out = torch.where(prefix[..., None], units[0](z).to(z.dtype), out)  # (rows, seq, d)
        if s > 0 and bool(suffix.any()):  # written last, as the suffix wins where both meet
            out = torch.where(suffix[..., None], units[-1](z).to(z.dtype), out)  # (rows, seq, d)
        return out

    def prompt_refusal(self, length: int) -> str | None:
        """A prompt of ``length`` tokens shorter than ``suffix_positions`` while ``prefix_positions > 0``: the
        `adapters` library (and ``generate()`` here, which follows it) then writes shifted values into the
        suffix positions (its scatter takes the last ``s`` of the ``min(p, L) + min(s, L)`` adapted values), which
        per-row positions do not reproduce."""
        p, s = self.config.prefix_positions, self.config.suffix_positions
        if p > 0 and length < s:
            return (
                f"ReFT adapter {self.adapter_name!r} (prefix_positions={p}, suffix_positions={s}) on a prompt of "
                f"{length} tokens: a prompt shorter than suffix_positions gets the `adapters` library's shifted "
                "suffix values, which only a whole-prompt forward computes. Generate it with model.generate() and "
                "the adapter active, or give a prompt of at least suffix_positions tokens."
            )
        return None


def units_of(adapter: ReftAdapter, layer: int) -> nn.ModuleList:
    """The units of ``adapter`` at ``layer`` (one when tied: prefix and suffix; else prefix, suffix)."""
    units: nn.ModuleList = adapter.layers[str(layer)].units  # type: ignore[assignment]
    return units
