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
``batch_split_grouped`` (one computation for a BatchSplit of alike adapters) / ``split_grouped`` (one for a Split
of alike adapters over token positions: a packed row's segments). ``composable`` lists the blocks a
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
from adapterhub.methods.point_inputs import (
    AttentionInputs,
    BaseWeights,
    CallPositions,
    EmbeddingInputs,
    EmbeddingState,
    LinearInputs,
    LinearRunning,
    PointInputs,
    ResidualInputs,
    SiteInputs,
)
from adapterhub.spec.configs import MethodConfig

__all__ = [  # the protocol, and the point inputs (adapterhub.methods.point_inputs) it hands to methods
    "ALL_BLOCKS",
    "ATTENTION",
    "EMBEDDING",
    "EMBEDDING_LAYER",
    "LINEAR",
    "METHODS",
    "MODULE",
    "MODULE_LAYER",
    "RESIDUAL",
    "AdapterModule",
    "AttentionInputs",
    "BaseWeights",
    "CallPositions",
    "EmbeddingInputs",
    "EmbeddingState",
    "LinearInputs",
    "LinearRunning",
    "ModelDims",
    "NamedModule",
    "PointInputs",
    "ResidualInputs",
    "SiteInputs",
    "StackDims",
    "method_for_config",
    "register_method",
]

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
    # ``nn.MultiheadAttention`` (LoRA on ``in_proj_weight`` and ``out_proj``: ``methods.lora_mha``): ``d_in`` its
    # embed_dim E, ``d_out`` the fused q/k/v width 3E
    attention: bool = False
    # a convolution's ``groups`` (LoRA's ``lora_B`` is grouped as the module, as peft's; it cannot be merged then)
    groups: int = 1
    # ``bias``: whether it has a ``bias`` parameter; ``bias_axis`` the output dimension that bias is added along
    # (-1: Linear, Conv1D, LayerNorm; 1: convolutions, batch / group norm; None: unknown use of its bias)
    bias: bool = False
    bias_axis: int | None = None
    # ``input_embedding``: the model's input embeddings (``get_input_embeddings()``); ``tied_to``: the path of the
    # nn.Embedding whose weight this module shares (an output head tied to the input embeddings)
    input_embedding: bool = False
    tied_to: str | None = None


@dataclass(frozen=True)
class StackDims:
    """The widths of one layer stack, for the layers ``start..`` up to the next stack's ``start``: its residual
    width ``hidden_size``, self-attention's ``num_heads`` / ``num_kv_heads`` / ``head_dim`` and the ``(point, d_in,
    d_out)`` of its linear projections. Stacks of one model may differ (CLIPModel: a text tower of width 512 and a
    vision tower of width 768); an adapter sizes its modules at a layer from that layer's stack."""

    start: int
    hidden_size: int
    linear_shapes: tuple[tuple[str, int, int], ...] = ()
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None


@dataclass(frozen=True)
class ModelDims:
    """The facts about a model that an adapter's shapes depend on.

    ``linear_shapes``: ``(point, d_in, d_out)`` of every linear projection the architecture names (for a slice of a
    fused projection, the slice's width); ``num_heads`` / ``num_kv_heads`` / ``head_dim``: self-attention's shape
    (``num_kv_heads < num_heads`` under grouped-query attention); ``residual_points``: the names of the residual
    sites the architecture has; ``unsupported``: ``("kind:point", reason)`` for attachment points (or ``"method:NAME"``
    for methods) this model cannot carry (``architectures.unsupported_points``). Unknown facts are ``None`` / empty.

    Layer stacks may differ in width (CLIPModel's towers): ``stacks`` lists each stack's widths, and a method sizes
    its modules at a layer by ``hidden_size_at(layer)``, ``linear_shape(point, layer)`` and ``stack_at(layer)``; the
    model-wide fields above are the first stack's.
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
    # the widths of each layer stack, by first layer (``StackDims``); empty: every layer has the model-wide widths
    # above (which are the first stack's)
    stacks: tuple[StackDims, ...] = ()

    def stack_at(self, layer: int) -> StackDims:
        """The widths of the stack ``layer`` belongs to (the model-wide ones when no stacks are listed)."""
        found = None
        for stack in self.stacks:
            if stack.start <= layer:
                found = stack
        if found is not None:
            return found
        return StackDims(
            0, self.hidden_size, self.linear_shapes, self.num_heads, self.num_kv_heads, self.head_dim
        )

    def hidden_size_at(self, layer: int) -> int:
        """The residual width of ``layer`` (its stack's ``hidden_size``)."""
        return self.stack_at(layer).hidden_size

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

    def linear_shape(self, point: str, layer: int | None = None) -> tuple[int, int]:
        """``(d_in, d_out)`` of the projection ``point`` (in ``layer``'s stack when given, else the first stack
        that has it); a ConfigError names the ones this model has."""
        reason = self.unsupported_reason(LINEAR, point)
        if reason is not None:
            raise ConfigError(
                f"The projection {point!r} cannot carry adapters on this {self.model_type} model: {reason}"
            )
        table = self.linear_shapes if layer is None else self.stack_at(layer).linear_shapes
        for name, d_in, d_out in (*table, *self.linear_shapes):
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


# ------------------------------------------------------------------------------------------------ modules


class AdapterModule(nn.Module):
    """One named adapter: parameters for every attachment point it occupies, built from a config and model dims.

    Subclasses implement ``points`` and ``stack_step``; the rest has defaults: ``forward_at`` runs the adapter
    alone as a one-element Stack; ``stack_leave`` leaves by the kind's rule; Fuse, grouped BatchSplit and merging
    are refused with a ``ConfigError`` naming the method unless the method provides them."""

    config_cls: ClassVar[type[MethodConfig]]
    composable: ClassVar[frozenset[str]] = ALL_BLOCKS  # the blocks this method may sit in
    mergeable: ClassVar[bool] = False  # whether merge_adapter can fold it into the base weights
    # why this method cannot run on a slice of a packed row's tokens (runtime/packing), when Split is not composable
    packed_refusal: ClassVar[str | None] = None
    # why average_adapter cannot combine adapters of this method (None: it can)
    average_refusal: ClassVar[str | None] = None
    # whether it reads the call's positions (attention mask, cache length) at its residual points (ReFT)
    reads_positions: ClassVar[bool] = False
    # whether ``build_for_load`` runs the initialisers (True) or builds the module with ``initialise=False``
    # (False); read from the class's own body, never inherited: see ``build_for_load``
    init_on_load: ClassVar[bool] = True

    def __init__(self, name: str, config: MethodConfig, dims: ModelDims) -> None:
        super().__init__()
        self.adapter_name = name
        self.config = config
        self.dims = dims

    @classmethod
    def build_for_load(cls, name: str, config: MethodConfig, dims: ModelDims) -> AdapterModule:
        """The module, built only to receive saved tensors (``load_adapter``, ``prepare_adapter_from_record``).

        A class whose own body sets ``init_on_load = False`` is built as ``cls(name, config, dims,
        initialise=False)``: its constructor then skips drawing values that the load overwrites, under the contract
        that every parameter and persistent buffer it leaves unset is in its ``state_dict`` (the load checks that
        the file holds every key, and raises otherwise) and that every other tensor (non-persistent buffers,
        seeded projections, derived state) is still computed as on ``add_adapter``. Any other class is built as
        on ``add_adapter`` (its initialisers run; the load overwrites their values). The flag is read from
        ``cls.__dict__`` so that a subclass (DoRA of LoRA, with a magnitude and other layers) never inherits the
        promise: it must make it itself."""
        if cls.__dict__.get("init_on_load", True):
            return cls(name, config, dims)
        return cls(name, config, dims, initialise=False)  # type: ignore[call-arg]

    @classmethod
    def linear_shapes_from(cls, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, int, int], ...]:
        """The ``(point, d_in, d_out)`` of projections that saved weights of this method imply (validating files
        without a model); methods that do not attach to projections imply none."""
        return ()

    @classmethod
    def conv_shapes_from(
        cls, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[tuple[str, int, int, tuple[int, ...]], ...]:
        """The ``(point, c_in, c_out, kernel)`` of ``nn.Conv2d`` targets that saved weights imply (validating files
        without a model); methods without a convolution form imply none."""
        return ()

    @classmethod
    def conv_shapes_for_config(
        cls, config: MethodConfig, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[tuple[str, int, int, tuple[int, ...]], ...]:
        """``conv_shapes_from`` with the config's help, for methods whose weights say a target is a convolution only
        through the config's rules (LoKr's factored ``W2`` in a folder peft wrote); default: the weights alone."""
        return cls.conv_shapes_from(tensors)

    @classmethod
    def shapes_for_config(
        cls, config: MethodConfig, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[tuple[str, int, int], ...]:
        """``linear_shapes_from`` with the config's help, for methods whose weights alone do not fix a width (OFT's
        one shared block under ``block_share`` with an ``r`` config); default: the weights alone."""
        return cls.linear_shapes_from(tensors)

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
    def refuse_in(self, block: str, others: Sequence[AdapterModule]) -> str | None:
        """Why this adapter cannot sit in a ``block`` (its kind, e.g. ``"Stack"``) beside the adapters ``others``,
        or None when it can; asked when a setup is activated, before ``composable``. Default: None."""
        return None

    def prompt_refusal(self, length: int) -> str | None:
        """Why a sequence whose prompt has ``length`` tokens cannot run with per-row positions
        (``CallPositions.rank``, the generation engine's steps), or None when it can. Default: None."""
        return None

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

    def split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        bounds: Sequence[tuple[int, int]],
    ) -> torch.Tensor | None:
        """Split of ``modules`` (this one first) over the token positions ``[start_k, end_k)`` as one computation
        (positions in no bound keep the base value), or None when they cannot be grouped (the interpreter then runs
        the slices one by one)."""
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

    def modifies_base(self) -> bool:
        """Whether the adapter replaces base weights while it is on the model (LoRA's PiSSA / OLoRA / LoftQ
        inits): it then shares the base with no other adapter, and ``base_updates`` says what changes. Default:
        no."""
        return False

    def base_updates(self, restore: bool) -> Iterator[tuple[int, str, torch.Tensor]]:
        """``(layer, point, ΔW (d_out, d_in))`` that ``add_adapter`` / ``load_adapter`` add to the base weights
        after ``init_from_base`` (``restore=False``), and ``delete_adapter`` adds to put them back
        (``restore=True``). Default: none."""
        return iter(())

    # ---- training protocol (asked by the training loop for each adapter that has trainable parameters)
    def training_loss(self) -> torch.Tensor | None:
        """A term the training loop adds to each batch's loss while this adapter trains (AdaLoRA: its orthogonal
        regulariser); None (default): nothing."""
        return None

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called by the training loop after optimizer step ``step`` (1-based) of ``total_steps``, while that
        step's gradients are still held (before they are zeroed): AdaLoRA's rank allocation. Default: nothing."""

    def conv_modules(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """``{path: (in_channels, kernel)}`` of the ``nn.Conv2d`` (``(kh, kw)``) and, for LoHa / LoKr, ``nn.Conv1d``
        (``(k,)``) modules this adapter targets by name, recorded in its files (``conv_modules``) because some
        factors do not say them (LoHa's flattened kernel). Default: none."""
        return {}

    def saved_paths(self) -> tuple[str, ...]:
        """Paths of the model's modules this adapter keeps a full trainable copy of (``modules_to_save``); before
        the adapter's weights are loaded, the model hands it each copy with ``set_saved(path, copy)``, and while
        the adapter is active the copy runs in the module's place. Default: none."""
        return ()

    def copied_paths(self) -> tuple[str, ...]:
        """Paths of the model's modules this adapter keeps a trainable copy of and runs itself at its module
        points ``("module", path)`` (LN tuning: the copy computes the point's output). Like ``saved_paths``, the
        model hands it each copy with ``set_saved(path, copy)`` before weights are loaded; unlike those, no hook
        swaps the copy in: the method's ``stack_step`` runs it, so every composition block applies. Default:
        none."""
        return ()

    def set_saved(self, path: str, copy: nn.Module) -> None:
        raise ConfigError(f"{self.method} adapters keep no copies of the model's modules (modules_to_save).")

    def saved_module(self, path: str) -> nn.Module:
        raise ConfigError(f"{self.method} adapter {self.adapter_name!r} keeps no copy of {path!r}.")

    def bias_paths(self) -> tuple[str, ...]:
        """Paths of the model's modules whose bias this adapter keeps a trainable copy of (LoRA's ``bias``
        option); before its weights are loaded the model hands it each bias with ``set_bias(path, bias)``, and
        while the adapter is active the copy replaces the module's bias. Default: none."""
        return ()

    def set_bias(self, path: str, bias: torch.Tensor) -> None:
        raise ConfigError(f"{self.method} adapters keep no copies of the model's biases (option bias).")

    def token_embeddings(self) -> dict[str, tuple[int, ...]]:
        """``{embedding path: token ids}`` whose rows this adapter keeps a trainable copy of (LoRA's
        ``trainable_token_indices``); the model hands it the rows with ``set_tokens(path, rows)`` before its
        weights are loaded. Default: none."""
        return {}

    def token_paths(self) -> tuple[str, ...]:
        """Modules whose rows (an embedding's, a tied output head's) the copies replace while active."""
        return ()

    def set_tokens(self, path: str, rows: torch.Tensor) -> None:
        raise ConfigError(f"{self.method} adapters keep no embedding rows (option trainable_token_indices).")

    def token_delta(self, path: str) -> tuple[tuple[int, ...], torch.Tensor]:
        raise ConfigError(f"{self.method} adapter {self.adapter_name!r} keeps no rows of {path!r}.")

    def held_bias(self, path: str) -> torch.Tensor:
        raise ConfigError(
            f"{self.method} adapter {self.adapter_name!r} keeps no copy of the bias of {path!r}."
        )

    def adopt_tensors(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Saved tensors renamed to this module's own state-dict keys before they are loaded (a file that names
        the same parameters differently, e.g. by the module paths of a model saved with another head). Default:
        unchanged."""
        return dict(tensors)

    def merge_writes(
        self, base: BaseWeights, merge: bool
    ) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor | None]] | None:
        """For a method whose merge replaces base parameters instead of adding to them (LN tuning writes its tuned
        norm into the base and, on unmerge, the values it kept back): ``(layer, point, W, b or None)`` to copy
        into the base parameters, bit for bit; None (default): merge by ``merge_updates``."""
        return None

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
