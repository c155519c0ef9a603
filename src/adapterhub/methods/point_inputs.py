"""What a hook hands to the adapters at one attachment point: ``PointInputs`` and its kinds ``ResidualInputs``,
``LinearInputs`` (with ``LinearRunning``), ``AttentionInputs`` and ``EmbeddingInputs`` (with ``EmbeddingState``).
``adapterhub.methods.base`` (the method protocol) re-exports them; the table there says which kind gets which."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.errors import ConfigError


@dataclass(frozen=True)
class CallPositions:
    """The positions of one model call, for methods that intervene on positions counted from the call's padding
    (ReFT): ``mask`` the call's 2D attention mask ``(batch, past + seq)`` (None when the call passed none), ``past``
    how many positions its key/value cache already held (cached decoding: the call computes positions
    ``past .. past + seq - 1``).

    A caller that knows more than a mask can say (the generation engine: rows of different sequences, each with its
    own cache length and prompt) gives the positions per row instead: ``rank`` ``(batch, seq)`` is each computed
    position's index among its sequence's tokens (cached ones included; -1 on padding) and ``prompt`` ``(batch,)``
    each row's prompt length (its tokens before the first generated one), or ``(batch, seq)`` each position's own
    sequence's prompt length (a packed row: several sequences one after the other in one row).

    ``sliced``: these are a slice of a call's positions along ``seq`` (``Split``) without ``rank``: a row's first
    and last token lie outside the slice, so nothing here says where its positions are."""

    mask: torch.Tensor | None
    past: int = 0
    rank: torch.Tensor | None = None
    prompt: torch.Tensor | None = None
    sliced: bool = False

    def rows(self, index: slice) -> CallPositions:
        """The same positions for rows ``index`` of the batch."""
        return CallPositions(
            None if self.mask is None else self.mask[index],
            self.past,
            None if self.rank is None else self.rank[index],
            None if self.prompt is None else self.prompt[index],
            self.sliced,
        )

    def columns(self, index: slice) -> CallPositions:
        """The positions of the computed positions ``index`` (``Split``): per position (``rank``, and ``prompt``
        when given per position) they are sliced along; counted from the call's mask they are lost (``sliced``)."""
        if self.rank is None:
            return CallPositions(None, self.past, sliced=True)
        prompt = self.prompt
        if prompt is not None and prompt.dim() == 2:
            prompt = prompt[:, index]  # (batch, slice)
        return CallPositions(None, self.past, self.rank[:, index], prompt)  # rank: (batch, slice)


class PointInputs:
    """What a hook hands to the adapters at one attachment point of one layer, and the kind's own rules:

    - ``base()``: the point's value with no adapter;
    - ``start()`` / ``finish(running)``: the running value a Stack begins with, and how it leaves the point when
      the last adapter does not say otherwise;
    - ``on(running)``: the inputs a block sees when it ends a Stack whose running value is ``running``;
    - ``select(index, dim)``: the same inputs restricted to rows (``dim`` 0) or positions (``dim`` 1); ``join``
      concatenates the parts' values again.
    """

    def base(self) -> torch.Tensor:
        raise NotImplementedError

    def start(self) -> Any:
        raise NotImplementedError

    def finish(self, running: Any) -> torch.Tensor:
        return running  # type: ignore[no-any-return]

    def on(self, running: Any) -> PointInputs:
        raise NotImplementedError

    def select(self, index: slice, dim: int) -> PointInputs:
        raise NotImplementedError

    def join(self, parts: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=dim)

    def batch_size(self) -> int:
        raise NotImplementedError

    def length(self) -> int:
        raise NotImplementedError

    def at_positions(self, positions: CallPositions) -> PointInputs:
        """These inputs with the call's positions attached (kinds whose methods read none: unchanged)."""
        return self


def _index(index: slice, dim: int) -> tuple[slice, ...]:
    return (index,) if dim == 0 else (slice(None), index)


@dataclass
class ResidualInputs(PointInputs):
    """A residual point. ``h``: sub-layer output before the residual add, ``(batch, seq, hidden)``; ``residual``:
    the residual stream input of the sub-layer, same shape; ``norm``: the model's LayerNorm after the sub-layer
    (post-norm models) or ``None`` (pre-norm models, where the layer adds ``h`` to the residual itself);
    ``normed``: ``norm(h + residual)`` as the model itself computed it for this very ``h``, or ``None`` when
    unknown (anyone building inputs with a different ``h`` must leave it ``None``); ``positions``: the call's
    positions (``CallPositions``) when an active adapter reads them, else ``None``."""

    h: torch.Tensor
    residual: torch.Tensor
    norm: Callable[[torch.Tensor], torch.Tensor] | None
    normed: torch.Tensor | None = None
    positions: CallPositions | None = None

    def original_output(self) -> torch.Tensor:
        """``norm(h + residual)`` (post-norm models) or ``h + residual``; the model's own value when known."""
        if self.normed is not None:
            return self.normed
        summed = self.h + self.residual  # (batch, seq, hidden)
        return self.norm(summed) if self.norm is not None else summed

    def base(self) -> torch.Tensor:
        """What the hooked module outputs without adapters: ``LN(h + x)`` (post-norm) or ``h`` (pre-norm)."""
        return self.h if self.norm is None else self.original_output()

    def start(self) -> torch.Tensor:
        return self.h

    def on(self, running: Any) -> ResidualInputs:
        # The model's own LayerNorm output belongs to its own h only.
        normed = self.normed if running is self.h else None
        return ResidualInputs(running, self.residual, self.norm, normed, self.positions)

    def select(self, index: slice, dim: int) -> ResidualInputs:
        at = _index(index, dim)
        normed = self.normed[at] if self.normed is not None else None
        # a block of rows keeps its rows' positions; a block of positions keeps them only where given per position
        positions = None
        if self.positions is not None:
            positions = self.positions.rows(index) if dim == 0 else self.positions.columns(index)
        return ResidualInputs(self.h[at], self.residual[at], self.norm, normed, positions)

    def at_positions(self, positions: CallPositions) -> ResidualInputs:
        return ResidualInputs(self.h, self.residual, self.norm, self.normed, positions)

    def batch_size(self) -> int:
        return int(self.h.shape[0])

    def length(self) -> int:
        return int(self.h.shape[1])


SiteInputs = ResidualInputs  # the name used before other kinds existed


@dataclass(frozen=True)
class LinearRunning:
    """The running value of a Stack at a linear projection ``y = W x + b``: ``y`` the output so far
    ``(batch, seq, d_out)``; ``in_scale`` ``(d_in,)`` / ``out_scale`` ``(d_out,)`` the products of the scalings
    applied so far to the base projection's input / output ((IA)³ steps), ``None`` where none was. An adapter that
    adds an update to ``y`` keeps the scalings (``with_y``), so a later scaling step still knows them.
    ``rotated``: the adapter whose orthogonal step (OFT, BOFT) rotated the base projection's input in this Stack,
    if any; the running value cannot carry a second non-diagonal change of that input, so later rotations and
    (IA)³ input vectors refuse it by name."""

    y: torch.Tensor
    in_scale: torch.Tensor | None = None
    out_scale: torch.Tensor | None = None
    rotated: str | None = None

    def with_y(self, y: torch.Tensor) -> LinearRunning:
        return LinearRunning(y, self.in_scale, self.out_scale, self.rotated)


@dataclass
class LinearInputs(PointInputs):
    """A linear projection: ``x`` its input ``(batch, seq, d_in)``, ``y`` its output ``(batch, seq, d_out)`` (the
    point's slice of a fused projection). The running value of a Stack is a ``LinearRunning``: the output so far,
    which adapters add to, and the scalings applied to the base projection so far.

    ``weight`` / ``bias``: the projection's own parameters as ``(d_out, d_in)`` / ``(d_out,)`` views (the point's
    slice of a fused projection; ``Conv1D`` weights transposed), so that ``y = x weightᵀ + bias``; filled by the
    hook, ``None`` where a caller builds inputs without them. Methods that need the base weight at forward time
    (DoRA's weight norm, (IA)³ scaling a projection's input) read it through ``require_weight``, never the field
    itself: for a quantised base layer (bitsandbytes 4-/8-bit) the hook leaves a function there that dequantises
    the weight, called on first use. They must not modify it.

    ``in_scale`` / ``out_scale`` / ``rotated``: the scalings (and rotation) a Stack applied before the block these
    inputs are handed to (``on``); ``untouched``: ``y`` is still the projection's own output ``W x + b`` (False once a Stack step changed it)."""

    x: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor | Callable[[], torch.Tensor] | None = None
    bias: torch.Tensor | None = None
    in_scale: torch.Tensor | None = None
    out_scale: torch.Tensor | None = None
    untouched: bool = True
    rotated: str | None = None

    def base(self) -> torch.Tensor:
        return self.y

    def start(self) -> LinearRunning:
        return LinearRunning(self.y, self.in_scale, self.out_scale, self.rotated)

    def finish(self, running: Any) -> torch.Tensor:
        return running.y  # type: ignore[no-any-return]

    def holds_own_output(self, running: LinearRunning) -> bool:
        """Whether ``running.y`` is still the projection's own output ``W x + b`` (no step has changed it)."""
        return self.untouched and running.y is self.y

    def on(self, running: Any) -> LinearInputs:
        return LinearInputs(
            self.x,
            running.y,
            self.weight,
            self.bias,
            running.in_scale,
            running.out_scale,
            self.holds_own_output(running),
            running.rotated,
        )

    def select(self, index: slice, dim: int) -> LinearInputs:
        at = _index(index, dim)
        return LinearInputs(
            self.x[at],
            self.y[at],
            self.weight,
            self.bias,
            self.in_scale,
            self.out_scale,
            self.untouched,
            self.rotated,
        )

    def require_weight(self, needs: str) -> torch.Tensor:
        """``weight`` ``(d_out, d_in)`` as a float tensor (a quantised base layer's dequantised once per inputs);
        raises naming ``needs`` (who needs it) when the inputs were built without it."""
        if self.weight is None:
            raise ConfigError(
                f"{needs} needs the projection's weight at forward time (LinearInputs.weight); the adapter hooks "
                "fill it, so build LinearInputs with weight= when calling a method directly."
            )
        if not isinstance(self.weight, torch.Tensor):
            self.weight = self.weight()  # (d_out, d_in), dequantised
        return self.weight

    def projection(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """``W x`` without the bias, ``(batch, seq, d_out)``: from ``y`` while it is untouched and ``x`` is the
        projection's own input, else recomputed from ``weight``."""
        if x is None and self.untouched:
            return self.y if self.bias is None else self.y - self.bias
        weight = self.require_weight("Recomputing the projection")
        return torch.nn.functional.linear(self.x if x is None else x, weight)

    def batch_size(self) -> int:
        return int(self.y.shape[0])

    def length(self) -> int:
        return int(self.y.shape[1]) if self.y.dim() > 2 else 1


BaseWeights = Callable[[int, str], tuple[torch.Tensor, "torch.Tensor | None"]]
"""``(layer, linear point) -> (weight (d_out, d_in), bias (d_out,) or None)``: views of the base model's projection
parameters (the point's slice of a fused projection; ``Conv1D`` transposed). Writing into them (in place) changes
the model: only merging does."""

AttentionCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass
class AttentionInputs(PointInputs):
    """Self-attention of one layer as transformers calls its attention function: ``query`` ``(B, H, T, D)``,
    ``key`` / ``value`` ``(B, H_kv, S, D)`` (S includes cached positions), ``mask`` as the model built it (an
    additive float or boolean ``(B, 1, T, S)`` mask, or ``None``), ``causal`` whether the model is causal, and
    ``call(query, key, value, mask)`` the model's own attention function returning ``(B, T, H, D)``.

    The running value of a Stack is these inputs with prefixes prepended (``with_prefix``); it leaves the point
    by running the attention."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: Any
    causal: bool
    call: AttentionCall
    hidden: torch.Tensor | None = None  # the self-attention module's input (B, T, d), where the hook saw it

    def base(self) -> torch.Tensor:
        return self.call(self.query, self.key, self.value, self.mask)

    def start(self) -> AttentionInputs:
        return self

    def finish(self, running: Any) -> torch.Tensor:
        return running.base()  # type: ignore[no-any-return]

    def on(self, running: Any) -> AttentionInputs:
        return running  # type: ignore[no-any-return]

    def select(self, index: slice, dim: int) -> AttentionInputs:
        if dim != 0:
            raise ConfigError(
                "Split (by sequence position) cannot run at self-attention: the positions attend to each other. "
                "Use BatchSplit, or a method that attaches elsewhere."
            )
        mask = (
            self.mask[index] if isinstance(self.mask, torch.Tensor) and self.mask.shape[0] > 1 else self.mask
        )
        hidden = self.hidden[index] if self.hidden is not None else None
        return AttentionInputs(
            self.query[index], self.key[index], self.value[index], mask, self.causal, self.call, hidden
        )

    def join(self, parts: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=0)

    def batch_size(self) -> int:
        return int(self.query.shape[0])

    def length(self) -> int:
        return int(self.query.shape[2])

    def with_prefix(self, key_prefix: torch.Tensor, value_prefix: torch.Tensor) -> AttentionInputs:
        """These inputs with ``P`` prefix positions prepended to every row's keys and values (``(B, H_kv, P, D)``,
        or ``(1, H_kv, P, D)`` for all rows) that every query may attend to: the mask gets ``P`` visible columns
        in front (a causal model's implicit mask is made explicit first)."""
        batch, prefix = self.key.shape[0], key_prefix.shape[2]
        key_prefix = key_prefix.to(self.key.dtype).expand(batch, -1, -1, -1)
        value_prefix = value_prefix.to(self.value.dtype).expand(batch, -1, -1, -1)
        key = torch.cat([key_prefix, self.key], dim=2)  # (B, H_kv, P+S, D)
        value = torch.cat([value_prefix, self.value], dim=2)
        mask = self.mask
        t, s = self.query.shape[2], self.key.shape[2]
        if mask is None and self.causal and t > 1:
            # the model relied on is_causal: build that mask; query i sits at key position s - t + i
            rows = torch.arange(t, device=self.query.device).unsqueeze(1) + (s - t)  # (T, 1)
            mask = (torch.arange(s, device=self.query.device).unsqueeze(0) <= rows).view(1, 1, t, s)
        if mask is not None:
            mask = mask[..., -s:] if mask.shape[-1] > s else mask  # some models hand a longer mask
            if mask.dtype == torch.bool:
                visible = torch.ones(*mask.shape[:-1], prefix, dtype=torch.bool, device=mask.device)
            else:
                visible = torch.zeros(*mask.shape[:-1], prefix, dtype=mask.dtype, device=mask.device)
            mask = torch.cat([visible, mask], dim=-1)  # (B|1, 1, T, P+S)
        return AttentionInputs(
            self.query, key, value, mask, False if mask is not None else self.causal, self.call, self.hidden
        )


@dataclass
class EmbeddingState:
    """The running value of a Stack at an embedding point: the value and whether an adapter of the Stack has
    already transformed it (only the first one that occupies the point does)."""

    value: torch.Tensor
    applied: bool = False


@dataclass
class EmbeddingInputs(PointInputs):
    """An embedding point: ``x`` ``(batch, seq, d)``. Point ``embeddings``: the output of the model's input
    embedding module (``ArchitectureSpec.embeddings``); point ``unembed``: the last hidden states entering an LM
    head. The running value of a Stack is an ``EmbeddingState``."""

    x: torch.Tensor

    def base(self) -> torch.Tensor:
        return self.x

    def start(self) -> EmbeddingState:
        return EmbeddingState(self.x)

    def finish(self, running: Any) -> torch.Tensor:
        return running.value if isinstance(running, EmbeddingState) else running  # type: ignore[no-any-return]

    def on(self, running: Any) -> EmbeddingInputs:
        return EmbeddingInputs(self.finish(running))

    def select(self, index: slice, dim: int) -> EmbeddingInputs:
        return EmbeddingInputs(self.x[_index(index, dim)])

    def batch_size(self) -> int:
        return int(self.x.shape[0])

    def length(self) -> int:
        return int(self.x.shape[1])
