"""The method protocol: what every adapter method provides, where it attaches, and the registry of methods.

An adapter method is one module (``methods/<name>.py``) with one ``@register_method("<name>")`` entry. Its
``AdapterModule`` subclass declares the *attachment points* it occupies per layer, each a ``(kind, name)`` pair:

=============  ==================================================  ===========================================
kind           points (named per architecture by its ArchitectureSpec)  value handed to the method (``*Inputs``)
=============  ==================================================  ===========================================
``residual``   ``attn``, ``ffn``: after a sub-layer, around its       ``ResidualInputs``: sub-layer output ``h``,
               residual add (and post-norm LayerNorm)                 residual input, the LayerNorm
``linear``     ``q``, ``k``, ``v``, ``attn_out``, ``ffn_in``,          ``LinearInputs``: the projection's input
               ``ffn_gate`` (gated FFNs), ``ffn_out``                 ``x`` and output ``y``
``attention``  ``self``: the keys/values of self-attention            ``AttentionInputs``: query, key, value, mask
``module``     any ``nn.Linear`` / ``Conv1D`` / ``nn.Embedding``      ``LinearInputs``, as ``linear`` (``x``: token
               named by its path in                                   ids for an ``nn.Embedding``)
               the model (``bert.pooler.dense``), at layer
               ``MODULE_LAYER``; chosen by ``target_modules``
=============  ==================================================  ===========================================

Decoder layers of encoder-decoder models also have ``cross_attn`` (residual), ``cross_q``, ``cross_k``,
``cross_v``, ``cross_out`` (linear) and ``cross`` (attention); ``ModelDims.has_point`` says where a point exists.

The composition interpreter (``adapterhub.runtime.interpreter``) runs every block through three questions it asks the
method, never its class: ``stack_step`` (apply this adapter to the running value of a Stack), ``stack_leave`` (turn
the running value into the point's output), and, optionally, ``fuse_enter`` / ``fuse_deltas`` (AdapterFusion) and
``batch_split_grouped`` (one computation for a BatchSplit of alike adapters). ``composable`` lists the blocks a
method may sit in; anything else raises a ``ConfigError`` naming the block and the method when the setup is
activated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from adapterhub.errors import ConfigError, did_you_mean
from adapterhub.spec.configs import MethodConfig

RESIDUAL = "residual"
LINEAR = "linear"
ATTENTION = "attention"
EMBEDDING = "embedding"
MODULE = "module"
EMBEDDING_LAYER = 0  # embedding points are reported and run as points of layer 0
MODULE_LAYER = (
    -1
)  # module points (named by their path in the model) are reported and run as points of layer -1
ALL_BLOCKS = frozenset({"Stack", "Fuse", "Split", "BatchSplit", "Parallel", "Average"})

Point = tuple[str, str]  # (kind, name), e.g. ("linear", "q")


@dataclass(frozen=True)
class NamedModule:
    """One submodule of the model, as targeting by name sees it: ``path`` from the model's root (as
    ``model.named_modules()`` and peft name it), ``type_name`` its class; for ``nn.Linear`` and GPT-2's ``Conv1D``
    (``linear``) its ``d_in`` / ``d_out`` and whether its weight is stored transposed (``Conv1D``: ``(d_in, d_out)``);
    ``layer`` the transformer layer holding it (None outside the layers, e.g. a pooler); ``point`` the spec's linear
    point it is (a whole, unfused projection), if any; ``output_head``: the model's output head (LM or classifier)."""

    path: str
    type_name: str
    linear: bool = False
    d_in: int = 0
    d_out: int = 0
    transposed: bool = False
    layer: int | None = None
    point: str | None = None
    output_head: bool = False
    # ``nn.Embedding``: a lookup table treated as a linear map from one-hot ids (``d_in`` = num_embeddings,
    # ``d_out`` = embedding_dim, ``transposed``); ``padding_idx`` its padding row
    embedding: bool = False
    padding_idx: int | None = None
    # ``nn.Conv2d`` (groups 1, dilation 1): ``d_in`` / ``d_out`` its channels, ``conv`` its (kernel_size, stride,
    # padding) as peft's LoRA copies them to ``lora_A``
    conv: tuple[Any, Any, Any] | None = None


@dataclass(frozen=True)
class ModelDims:
    """The facts about a model that an adapter's shapes depend on.

    ``linear_shapes``: ``(point, d_in, d_out)`` of every linear projection the architecture names (for a slice of a
    fused projection, the slice's width); ``num_heads`` / ``num_kv_heads`` / ``head_dim``: self-attention's shape
    (``num_kv_heads < num_heads`` under grouped-query attention); ``residual_points``: the names of the residual
    sites the architecture has; ``unsupported``: ``("kind:point", reason)`` for attachment points (or ``"method:NAME"``
    for methods) this model cannot carry (``architectures.unsupported_points``). Unknown facts are ``None`` / empty.
    """

    model_type: str
    hidden_size: int
    num_layers: int
    pre_norm: bool
    linear_shapes: tuple[tuple[str, int, int], ...] = ()
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    residual_points: tuple[str, ...] = ()  # the residual sites the architecture has (``attn``, ``ffn``)
    embedding_size: int | None = (
        None  # width of the input embeddings when it differs from hidden_size (ELECTRA)
    )
    unsupported: tuple[tuple[str, str], ...] = ()
    # Encoder-decoder models: the index of the first decoder layer, and the points only decoder layers have
    # (``cross_attn``, ``cross_q``, ..., the attention point ``cross``).
    decoder_start: int | None = None
    decoder_points: tuple[str, ...] = ()
    # every submodule by path (targeting by name: ``target_modules``); empty when the caller did not list them
    modules: tuple[NamedModule, ...] = ()

    def unsupported_reason(self, kind: str, point: str) -> str | None:
        """Why this model cannot carry the attachment point ``(kind, point)``, or ``None`` when it can."""
        return dict(self.unsupported).get(f"{kind}:{point}")

    def has_point(self, layer: int, point: str) -> bool:
        """Whether ``layer`` has the point named ``point`` (a decoder-only point exists in decoder layers only)."""
        return point not in self.decoder_points or (
            self.decoder_start is not None and layer >= self.decoder_start
        )

    def points_at(self, layer: int, points: Sequence[str]) -> tuple[str, ...]:
        """Those of ``points`` that ``layer`` has, in their order."""
        return tuple(p for p in points if self.has_point(layer, p))

    def linear_shape(self, point: str) -> tuple[int, int]:
        """``(d_in, d_out)`` of the projection ``point``; a ConfigError names the ones this model has."""
        reason = self.unsupported_reason(LINEAR, point)
        if reason is not None:
            raise ConfigError(
                f"The projection {point!r} cannot carry adapters on this {self.model_type} model: {reason}"
            )
        for name, d_in, d_out in self.linear_shapes:
            if name == point:
                return d_in, d_out
        known = [name for name, _, _ in self.linear_shapes]
        raise ConfigError(
            f"This {self.model_type} model has no linear projection {point!r}{did_you_mean(point, known)}; "
            f"it has: {', '.join(known) or 'none'}."
        )

    def check_leave_out(self, leave_out: tuple[int, ...]) -> None:
        """Raise a ConfigError when ``leave_out`` names a layer this model does not have."""
        out_of_range = [i for i in leave_out if i >= self.num_layers]
        if out_of_range:
            raise ConfigError(
                f"leave_out names layer(s) {out_of_range}, but the model has {self.num_layers} layers "
                f"(indices 0..{self.num_layers - 1})."
            )

    def linear_points(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.linear_shapes)


# ------------------------------------------------------------------------------------------------ point inputs


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


def _index(index: slice, dim: int) -> tuple[slice, ...]:
    return (index,) if dim == 0 else (slice(None), index)


@dataclass
class ResidualInputs(PointInputs):
    """A residual point. ``h``: sub-layer output before the residual add, ``(batch, seq, hidden)``; ``residual``:
    the residual stream input of the sub-layer, same shape; ``norm``: the model's LayerNorm after the sub-layer
    (post-norm models) or ``None`` (pre-norm models, where the layer adds ``h`` to the residual itself);
    ``normed``: ``norm(h + residual)`` as the model itself computed it for this very ``h``, or ``None`` when
    unknown (anyone building inputs with a different ``h`` must leave it ``None``)."""

    h: torch.Tensor
    residual: torch.Tensor
    norm: Callable[[torch.Tensor], torch.Tensor] | None
    normed: torch.Tensor | None = None

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
        return ResidualInputs(running, self.residual, self.norm, self.normed if running is self.h else None)

    def select(self, index: slice, dim: int) -> ResidualInputs:
        at = _index(index, dim)
        normed = self.normed[at] if self.normed is not None else None
        return ResidualInputs(self.h[at], self.residual[at], self.norm, normed)

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
    adds an update to ``y`` keeps the scalings (``with_y``), so a later scaling step still knows them."""

    y: torch.Tensor
    in_scale: torch.Tensor | None = None
    out_scale: torch.Tensor | None = None

    def with_y(self, y: torch.Tensor) -> LinearRunning:
        return LinearRunning(y, self.in_scale, self.out_scale)


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

    ``in_scale`` / ``out_scale``: the scalings a Stack applied before the block these inputs are handed to (``on``);
    ``untouched``: ``y`` is still the projection's own output ``W x + b`` (False once a Stack step changed it)."""

    x: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor | Callable[[], torch.Tensor] | None = None
    bias: torch.Tensor | None = None
    in_scale: torch.Tensor | None = None
    out_scale: torch.Tensor | None = None
    untouched: bool = True

    def base(self) -> torch.Tensor:
        return self.y

    def start(self) -> LinearRunning:
        return LinearRunning(self.y, self.in_scale, self.out_scale)

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
        )

    def select(self, index: slice, dim: int) -> LinearInputs:
        at = _index(index, dim)
        return LinearInputs(
            self.x[at], self.y[at], self.weight, self.bias, self.in_scale, self.out_scale, self.untouched
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


# ------------------------------------------------------------------------------------------------ modules


class AdapterModule(nn.Module):
    """One named adapter: parameters for every attachment point it occupies, built from a config and model dims.

    Subclasses implement ``points`` and ``stack_step``; the rest has defaults: ``forward_at`` runs the adapter
    alone as a one-element Stack; ``stack_leave`` leaves by the kind's rule; Fuse, grouped BatchSplit and merging
    are refused with a ``ConfigError`` naming the method unless the method provides them."""

    config_cls: ClassVar[type[MethodConfig]]
    composable: ClassVar[frozenset[str]] = ALL_BLOCKS  # the blocks this method may sit in
    mergeable: ClassVar[bool] = False  # whether merge_adapter can fold it into the base weights

    def __init__(self, name: str, config: MethodConfig, dims: ModelDims) -> None:
        super().__init__()
        self.adapter_name = name
        self.config = config
        self.dims = dims

    @classmethod
    def linear_shapes_from(cls, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, int, int], ...]:
        """The ``(point, d_in, d_out)`` of projections that saved weights of this method imply (validating files
        without a model); methods that do not attach to projections imply none."""
        return ()

    @property
    def method(self) -> str:
        return self.config.method

    def points(self, layer: int) -> tuple[Point, ...]:
        """The attachment points this adapter occupies at ``layer`` (empty if the layer is left out)."""
        raise NotImplementedError

    def kinds(self) -> frozenset[str]:
        """The kinds of attachment point this adapter uses anywhere."""
        return frozenset(kind for i in range(self.dims.num_layers) for kind, _ in self.points(i))

    def present(self, layer: int, kind: str, point: str) -> bool:
        return (kind, point) in self.points(layer)

    def sites_at(self, layer: int) -> tuple[str, ...]:
        """The residual points at ``layer`` (``"attn"``, ``"ffn"``)."""
        return tuple(name for kind, name in self.points(layer) if kind == RESIDUAL)

    # ---- composition protocol
    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> Any:
        """Apply this adapter to the running value of a Stack at ``point``."""
        raise NotImplementedError

    def stack_leave(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> torch.Tensor:
        """The point's output when this adapter was the last of a Stack with running value ``running``."""
        return inputs.finish(running)

    def forward_at(self, layer: int, point: Point, inputs: PointInputs) -> torch.Tensor:
        """The value that replaces the point's output when only this adapter is active."""
        return self.stack_leave(layer, point, self.stack_step(layer, point, inputs.start(), inputs), inputs)

    def fuse_enter(self, layer: int, point: Point, inputs: PointInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """For AdapterFusion: the fused adapters' common input ``x`` and what their mix is added to."""
        raise ConfigError(
            f"Fuse combines adapters that output a vector to mix (bottleneck adapters); {self.adapter_name!r} is a "
            f"{self.method} adapter."
        )

    def fuse_placement(self) -> Any:
        """What decides where this adapter's input and output sit at a point (adapters fused together must agree:
        the fusion prepares one input for all of them)."""
        raise ConfigError(
            f"Fuse combines adapters that output a vector to mix (bottleneck adapters); {self.adapter_name!r} is a "
            f"{self.method} adapter."
        )

    def fuse_deltas(
        self, modules: Sequence[AdapterModule], layer: int, point: Point, x: torch.Tensor
    ) -> torch.Tensor:
        """``u_n = A_n(x)`` of ``modules`` (this one among them), ``(B, T, d) -> (N, B, T, d)``."""
        raise ConfigError(f"Fuse cannot combine {self.method} adapters.")

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        """BatchSplit of ``modules`` (this one first) over consecutive row blocks of ``sizes`` rows as one
        computation, or None when they cannot be grouped (the interpreter then runs the row blocks one by one)."""
        return None

    def merged_deltas(self) -> Iterator[tuple[int, str, torch.Tensor]]:
        """``(layer, linear point, ΔW (d_out, d_in))`` that ``merge_adapter`` adds to the base weights."""
        raise ConfigError(
            f"{self.method} adapters cannot be merged into the base weights (their update is not a change of "
            "weights); merging works for LoRA, DoRA and (IA)³."
        )

    def init_from_base(self, base: BaseWeights) -> None:
        """Called by ``add_adapter`` once, before the new adapter joins the model (not when weights are loaded
        from a file): initialise parameters that depend on the base model's projections (DoRA: the magnitude
        ``‖W‖`` per output row). ``base(layer, point)`` gives the projection's ``(weight, bias)``. Default: none."""

    def saved_paths(self) -> tuple[str, ...]:
        """Paths of the model's modules this adapter keeps a full trainable copy of (``modules_to_save``); before
        the adapter's weights are loaded, the model hands it each copy with ``set_saved(path, copy)``, and while
        the adapter is active the copy runs in the module's place. Default: none."""
        return ()

    def set_saved(self, path: str, copy: nn.Module) -> None:
        raise ConfigError(f"{self.method} adapters keep no copies of the model's modules (modules_to_save).")

    def saved_module(self, path: str) -> nn.Module:
        raise ConfigError(f"{self.method} adapter {self.adapter_name!r} keeps no copy of {path!r}.")

    def adopt_tensors(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Saved tensors renamed to this module's own state-dict keys before they are loaded (a file that names
        the same parameters differently, e.g. by the module paths of a model saved with another head). Default:
        unchanged."""
        return dict(tensors)

    def merge_updates(
        self, base: BaseWeights, merge: bool
    ) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor | None]]:
        """``(layer, point, ΔW (d_out, d_in), Δb (d_out,) or None)`` to add to the base parameters to merge
        (``merge=True``) or to unmerge (``merge=False``) this adapter, given the current ones (``base``). Each
        update is computed from the parameters as they are when it is applied (points are applied in the order
        yielded). Default: ``±`` the ``merged_deltas``; methods whose update depends on the base weights (DoRA,
        (IA)³) override it."""
        sign = 1.0 if merge else -1.0
        for layer, point, delta in self.merged_deltas():
            yield layer, point, delta * sign, None


M = TypeVar("M", bound=type[AdapterModule])
METHODS: dict[str, type[AdapterModule]] = {}


def register_method(method: str) -> Callable[[M], M]:
    """Class decorator: ``@register_method("bottleneck")`` makes configs with that method build this module."""

    def decorate(cls: M) -> M:
        METHODS[method] = cls
        return cls

    return decorate


def method_for_config(config: MethodConfig) -> type[AdapterModule]:
    if config.method not in METHODS:
        raise ConfigError(
            f"No adapter method {config.method!r}{did_you_mean(config.method, METHODS)}; "
            f"available: {', '.join(sorted(METHODS))}."
        )
    return METHODS[config.method]
