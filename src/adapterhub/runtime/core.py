"""The model core every API mixin builds on: the adapter store, the architecture spec, the model's dimensions,
placement of new modules, lookup of adapters and the active setup.

``AdapterModelCore`` is the first base of the API mixins (heads, adapters, fusion, merging); each mixin only calls
what this core or its own bases define.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapterhub.errors import (
    AdapterNotFoundError,
    ConfigError,
    IncompatibleModelError,
    UnsupportedArchitectureError,
    did_you_mean,
)
from adapterhub.methods.base import (
    ATTENTION,
    EMBEDDING,
    MODULE,
    MODULE_LAYER,
    AdapterModule,
    ModelDims,
    StackDims,
)
from adapterhub.runtime import attention_hooks
from adapterhub.runtime.injection import linear_params
from adapterhub.runtime.interpreter import check_setup
from adapterhub.runtime.layers import get_layers, layer_stacks
from adapterhub.runtime.modules import (
    attach_module_points,
    attach_saved_modules,
    cached_by_structure,
    module_params,
    module_table,
    saved_copy,
)
from adapterhub.runtime.quantized import weight_shape
from adapterhub.runtime.records import ModelInfo
from adapterhub.runtime.specless import check_carries, check_heads, model_spec, model_type_of
from adapterhub.runtime.store import STORE_ATTR, AdapterStore
from adapterhub.runtime.validate import check_state_fits
from adapterhub.spec.architectures import (
    ArchitectureSpec,
    StackSpec,
    layer_config,
    stack_config,
    unsupported_points,
)
from adapterhub.spec.composition import (
    BatchSplit,
    Fuse,
    Parallel,
    Setup,
    Split,
    blocks_with_parents,
    normalize_setup,
    setup_names,
)
from adapterhub.spec.configs import MethodConfig

_HEAD_COUNT_ATTRS = ("num_attention_heads", "n_head", "n_heads")


def load_exact(module: nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``tensors`` into ``module`` after checking that names and shapes match exactly (each cast to its
    parameter's dtype). A tree of plain modules (``plain_state``) is copied into directly, tensor by tensor, which
    is what ``load_state_dict`` does for it without walking every module; any other goes through
    ``load_state_dict``."""
    expected = module.state_dict()
    check_state_fits(expected, tensors, what)
    if plain_state(module):
        with torch.no_grad():
            for key, target in expected.items():  # views of the parameters and persistent buffers
                target.copy_(tensors[key])
        return
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)


def plain_state(module: nn.Module) -> bool:
    """Whether ``module``'s ``state_dict`` / ``load_state_dict`` / ``to`` are torch's own on every submodule: no
    state-dict or load hooks, no extra state, no overridden ``_load_from_state_dict`` or ``_apply``, so its state
    dict's tensors are views of its parameters and buffers and loading or moving them is a plain copy."""
    base = nn.Module
    for part in module.modules():
        kind = type(part)
        if (
            part._state_dict_hooks
            or part._state_dict_pre_hooks
            or part._load_state_dict_pre_hooks
            or part._load_state_dict_post_hooks
            or kind._load_from_state_dict is not base._load_from_state_dict
            or kind._save_to_state_dict is not base._save_to_state_dict
            or kind.get_extra_state is not base.get_extra_state
            or kind._apply is not base._apply
        ):
            return False
    return True


def _placed(module: nn.Module, reference: torch.Tensor) -> bool:
    """Whether every parameter and buffer of ``module`` is on ``reference``'s device, the floating ones in its
    dtype (none complex: ``to`` casts those to the complex twin of the dtype)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device != reference.device or tensor.is_complex():
            return False
        if tensor.is_floating_point() and tensor.dtype != reference.dtype:
            return False
    return True


def linear_shapes(layer: nn.Module, spec: ArchitectureSpec | StackSpec) -> tuple[tuple[str, int, int], ...]:
    """``(point, d_in, d_out)`` of every linear point of ``spec`` (a stack of it) in one transformer layer."""
    shapes = []
    for point, linear in spec.linears.items():
        module = layer.get_submodule(linear.module)
        rows, cols = weight_shape(module)  # Linear (d_out, d_in); Conv1D (d_in, d_out); quantised: unpacked
        d_in, d_out = (rows, cols) if linear.transposed else (cols, rows)
        if linear.part is not None:
            d_out //= linear.part[1]
        shapes.append((point, int(d_in), int(d_out)))
    return tuple(shapes)


def attention_dims(config: Any, hidden: int) -> tuple[int | None, int | None, int | None]:
    """``(num_heads, num_kv_heads, head_dim)`` read from a transformers config (None where it says nothing)."""
    heads = next((getattr(config, a) for a in _HEAD_COUNT_ATTRS if getattr(config, a, None)), None)
    if heads is None:
        return None, None, None
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or hidden // heads
    return int(heads), int(kv), int(head_dim)


def stack_widths(dims: ModelDims) -> tuple[tuple[int, int, int | None, int | None], ...]:
    """``(first layer, hidden_size, num_kv_heads, head_dim)`` of each of ``dims``' stacks when they differ in one
    of these (``ModelInfo.stack_widths``); empty when they agree."""
    widths = tuple((s.start, s.hidden_size, s.num_kv_heads, s.head_dim) for s in dims.stacks)
    return widths if len({w[1:] for w in widths}) > 1 else ()


def _widths_text(info: ModelInfo) -> str:
    """``info``'s stack widths for a message (``hidden <d> from layer <i>`` each)."""
    if not info.stack_widths:
        return f"hidden {info.hidden_size} throughout"
    return ", ".join(f"hidden {w[1]} from layer {w[0]}" for w in info.stack_widths)


class AdapterModelCore:
    """What every adapter API mixin needs from the model it is mixed into (``adapterhub.init`` adds the store
    under ``STORE_ATTR`` and these classes as extra bases of the model's class)."""

    config: Any  # the transformers config (the model's own attribute; absent on a plain nn.Module)

    @property
    def _store(self) -> AdapterStore:
        return getattr(self, STORE_ATTR)  # type: ignore[no-any-return]

    @property
    def _spec(self) -> ArchitectureSpec:
        """The model's ArchitectureSpec; ``runtime.specless.MODULES_ONLY`` for a model without one."""
        return model_spec(self._module())

    @property
    def _model_type(self) -> str:
        return model_type_of(self)

    def _check_carries(self, config: MethodConfig) -> None:
        """Raise when this model cannot carry an adapter of ``config`` (a model without a spec: only adapters
        targeting modules by name)."""
        check_carries(self._spec, config, self._model_type)

    def _check_heads(self) -> None:
        """Raise when this model cannot carry flexible heads (a model without a spec)."""
        check_heads(self._spec, self._model_type)

    def _module(self) -> nn.Module:
        return self  # type: ignore[return-value]

    def _layers(self) -> nn.ModuleList:
        return get_layers(self._module(), self._spec)

    def _base_linear(self, layer: int, point: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Views of the base projection ``point`` of ``layer``: ``(weight (d_out, d_in), bias or None)``
        (``methods.base.BaseWeights``); at layer ``MODULE_LAYER`` the point is a module path."""
        if layer == MODULE_LAYER:
            return module_params(self._module(), point)
        module, stack = layer_stacks(self._module(), self._spec)[layer]
        linear = stack.linears[point]
        return linear_params(module.get_submodule(linear.module), linear)

    def model_dims(self) -> ModelDims:
        """The model's widths: per layer stack (``ModelDims.stacks``: CLIPModel's towers may differ in width, heads
        and FFN size), and model-wide as the first stack's (``hidden_size``, heads; ``linear_shapes`` lists every
        point of any stack, at the first stack's widths where several have it). Computed once per module tree
        (``cached_by_structure``: a server's loads do not re-walk the model; replacing a module, a weight or the
        config computes it again)."""
        return cached_by_structure(self._module(), "model_dims", self._compute_dims)  # type: ignore[no-any-return]

    def _compute_dims(self) -> ModelDims:
        spec = self._spec
        config = getattr(
            self, "config", None
        )  # None: a plain nn.Module (no spec: dims come from its modules)
        layers_config = layer_config(spec, config)  # CLIPModel: the text tower's (the first stack)
        layers = layer_stacks(self._module(), spec)
        stacks: list[StackDims] = []
        for stack in spec.stacks():
            start = next((i for i, (_, s) in enumerate(layers) if s.layers == stack.layers), None)
            if start is None:
                continue  # an empty stack
            stacks.append(self._stack_dims(start, layers[start][0], stack, stack_config(stack, config)))
        hidden = stacks[0].hidden_size if stacks else self._config_hidden(layers_config)
        heads, kv_heads, head_dim = attention_dims(layers_config, hidden)
        shapes: dict[str, tuple[str, int, int]] = {}
        for dims in stacks:
            for shape in dims.linear_shapes:
                shapes.setdefault(shape[0], shape)
        decoder = spec.decoder
        return ModelDims(
            model_type=self._model_type,
            hidden_size=hidden,
            num_layers=len(layers),
            pre_norm=spec.pre_norm,
            linear_shapes=tuple(shapes.values()),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            residual_points=tuple(dict.fromkeys(site for stack in spec.stacks() for site in stack.sites)),
            embedding_size=int(getattr(layers_config, "embedding_size", None) or hidden),
            unsupported=tuple(sorted(unsupported_points(spec, config).items())),
            decoder_start=sum(1 for _, s in layers if s.layers == spec.layers)
            if decoder is not None
            else None,
            decoder_points=spec.decoder_points(),
            modules=module_table(self._module(), spec),
            stacks=tuple(stacks),
        )

    def _config_hidden(self, config: Any) -> int:
        """The residual width a (sub-)config states (``spec.hidden_size_attr``, else ``hidden_size``; 0: none)."""
        return int(
            getattr(config, self._spec.hidden_size_attr, None) or getattr(config, "hidden_size", 0) or 0
        )

    def _stack_dims(self, start: int, first: nn.Module, stack: StackSpec, config: Any) -> StackDims:
        """The widths of ``stack`` (first layer ``first``, numbered ``start``) from its (sub-)config ``config``
        and its first layer's projections."""
        hidden = self._config_hidden(config)
        heads, kv_heads, head_dim = attention_dims(config, hidden)
        return StackDims(start, hidden, linear_shapes(first, stack), heads, kv_heads, head_dim)

    def model_info(self, dims: ModelDims | None = None) -> ModelInfo:
        """What an adapter file records about the model it was made for: read from ``dims`` (this model's
        ``model_dims()``, which it computes when not given)."""
        dims = self.model_dims() if dims is None else dims
        return ModelInfo(
            model_type=dims.model_type,
            model_name=str(getattr(getattr(self, "config", None), "name_or_path", "") or ""),
            hidden_size=dims.hidden_size,
            num_layers=dims.num_layers,
            decoder_start=dims.decoder_start,
            stack_widths=stack_widths(dims),
        )

    def _prepare_points(self, module: AdapterModule) -> None:
        """Before ``module`` joins the store: switch on the attachments of the kinds of point it uses that are
        not always on (self-attention: ``adapterhub.runtime.attention_hooks``). Raises when this model cannot carry them."""
        if EMBEDDING in module.kinds() and self._spec.embeddings is None:
            raise UnsupportedArchitectureError(
                f"{module.method} adapters attach at the input embeddings, which the ArchitectureSpec of "
                f"{self._model_type!r} does not name (encoder-decoder models have no embedding points: their "
                "encoder and decoder embed separately; speech encoders start from convolutional features, not "
                "token embeddings). Use a method that attaches inside the layers."
            )
        dims = module.dims
        methods = {("method", part.method) for part in module.modules() if isinstance(part, AdapterModule)}
        # every point it occupies (embedding points are layer 0's) and its method(s), union parts included
        points = {p for layer in range(dims.num_layers) for p in module.points(layer)}
        for kind, point in sorted(methods | points):
            reason = dims.unsupported_reason(kind, point)
            if reason is not None:
                raise ConfigError(
                    f"Adapter {module.adapter_name!r} ({module.method}) cannot attach to this {dims.model_type} "
                    f"model: {reason}"
                )
        if MODULE in module.kinds():
            paths = [point for kind, point in module.points(MODULE_LAYER) if kind == MODULE]
            owners = {m.path: m.layer for m in dims.modules if m.layer is not None}
            self._store.module_layers.update({p: owners[p] for p in paths if p in owners})
            attach_module_points(self._module(), self._store, paths)
        if module.saved_paths():
            attach_saved_modules(self._module(), self._store, module.saved_paths())
        if module.bias_paths():
            attach_saved_modules(self._module(), self._store, module.bias_paths(), kind="bias")
        if module.token_paths():
            attach_saved_modules(self._module(), self._store, module.token_paths(), kind="tokens")
        if ATTENTION in module.kinds():
            attention_hooks.enable(self._module(), self._spec)
        prepare = getattr(module, "prepare_for_model", None)
        if callable(prepare):  # e.g. prompt tuning initialised from the model's word embeddings
            prepare(self._module())

    def _bind_saved(self, module: AdapterModule) -> None:
        """Hand a new adapter its copies of the model's modules (``modules_to_save``, and the modules it runs a
        copy of: ``copied_paths``), biases (option ``bias``) and embedding rows (``trainable_token_indices``), before
        weights are loaded into it."""
        for path in (*module.saved_paths(), *module.copied_paths()):
            module.set_saved(path, saved_copy(self._module(), self._store, path))
        for path in module.bias_paths():  # option bias: copies of the model's biases
            bias: torch.Tensor = self._module().get_submodule(path).bias  # type: ignore[assignment]  # (d,)
            module.set_bias(path, bias)
        for path, ids in module.token_embeddings().items():  # trainable_token_indices: copies of those rows
            weight: torch.Tensor = self._module().get_submodule(path).weight  # type: ignore[assignment]
            module.set_tokens(path, weight[list(ids)])  # (n, d)

    def _check_saved_fit(self, module: AdapterModule, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise IncompatibleModelError when saved copies of modules (``modules_to_save``) have other shapes than
        this model's modules (e.g. a classifier for another number of labels)."""
        for path in module.saved_paths():
            key = f"saved.{path.replace('.', ':')}."
            have = {k: tuple(v.shape) for k, v in module.saved_module(path).state_dict().items()}
            wanted = {k[len(key) :]: tuple(v.shape) for k, v in tensors.items() if k.startswith(key)}
            if wanted and wanted != have:
                raise IncompatibleModelError(
                    f"The adapter's copy of {path!r} (modules_to_save, e.g. the model's built-in head) has parameters "
                    f"{wanted}; this model's module has {have}. Create the model with the same class and size "
                    "(num_labels=...), or load with with_head=False (the adapter without its module copies)."
                )

    def _place(self, module: nn.Module) -> nn.Module:
        """Put a new module on the device and floating dtype of the model's layers, in the model's train/eval
        mode (a head added to a model in eval mode must not apply dropout)."""
        model = self._module()
        # the first floating parameter: a quantised base (bitsandbytes) stores its projections as integer codes
        reference = next((p for p in self._layers().parameters() if p.is_floating_point()), None)
        if reference is None:  # a model without a spec: its first own floating parameter
            reference = next(
                p
                for n, p in model.named_parameters()
                if not n.startswith(STORE_ATTR + ".") and p.is_floating_point()
            )
        module.train(model.training)
        if plain_state(module) and _placed(module, reference):
            return module  # what ``to`` would do: nothing to move or cast
        return module.to(device=reference.device, dtype=reference.dtype)

    def _require_adapter(self, name: str) -> AdapterModule:
        adapters = self._store.adapters
        if name not in adapters:
            known = ", ".join(adapters.keys()) or "none yet"
            raise AdapterNotFoundError(
                f"No adapter named {name!r}{did_you_mean(name, adapters.keys())}. Adapters on this model: {known}. "
                "Add one with model.add_adapter(name) or load one with model.load_adapter(path)."
            )
        return adapters[name]  # type: ignore[return-value]

    @property
    def adapters(self) -> dict[str, MethodConfig]:
        """Name -> config of every adapter on the model, in the order they were added."""
        return {name: module.config for name, module in self._store.adapters.items()}  # type: ignore[misc]

    def has_adapter(self, name: str) -> bool:
        return name in self._store.adapters

    # ------------------------------------------------------------------ activation
    def _checked_setup(self, setup: Any) -> Setup | None:
        normalized = normalize_setup(setup)
        for name in setup_names(normalized):
            self._require_adapter(name)
        check_setup(normalized, self._store.adapter_modules())
        self._check_merged(normalized)
        if self._spec.decoder is not None and any(
            isinstance(b, Parallel) for b, _ in blocks_with_parents(normalized)
        ):
            raise ConfigError(
                f"Parallel is not supported on models with two layer stacks ({self._model_type}: encoder and "
                "decoder, or CLIP's text and vision towers): it replicates the batch inside one layer stack. Run "
                "the adapters one after the other, or use BatchSplit."
            )
        return normalized

    def _check_merged(self, setup: Setup | None) -> None:
        """While adapters are merged into the base weights they apply in every call: a setup must name each of
        them, and not inside a block that would run it on part of the batch or next to its own copy."""
        merged = list(self._store.merged)
        if not merged:
            return
        missing = [n for n in merged if n not in setup_names(setup)]
        if missing:
            raise ConfigError(
                f"Adapter(s) {missing} are merged into the base weights and apply in every forward pass; a setup "
                "without them cannot run. Call model.unmerge_adapter() first."
            )
        for block, child in blocks_with_parents(setup):
            if isinstance(block, (BatchSplit, Parallel, Fuse, Split)) and any(
                n in merged for n in setup_names(child)
            ):
                raise ConfigError(
                    f"{type(block).__name__} cannot run merged adapter(s) {merged}: their update is in the base "
                    "weights for every row and position. Call model.unmerge_adapter() first."
                )

    @property
    def active_adapters(self) -> Setup | None:
        """The setup applied in every forward pass: a name, a block such as ``Stack("a", "b")``, or None."""
        return self._store.current_setup()

    @active_adapters.setter
    def active_adapters(self, setup: Any) -> None:
        self.set_active_adapters(setup)

    def set_active_adapters(self, setup: Any) -> None:
        """Activate ``setup`` (a name, a list of names = a Stack, a block, or None) for every forward pass."""
        self._store.active_setup = self._checked_setup(setup)

    @contextlib.contextmanager
    def adapter_setup(self, setup: Any, *, skip_layers: Any = None) -> Iterator[None]:
        """Use ``setup`` for forward passes inside the ``with`` block only (per thread / async task).
        ``skip_layers``: AdapterDrop for these calls (see ``set_skip_layers``); None keeps the model's."""
        if self._store.merged:
            raise ConfigError(
                f"Adapter(s) {list(self._store.merged)} are merged into the base weights, so every call runs with "
                "them; a per-call setup cannot take them out. Call model.unmerge_adapter() first."
            )
        normalized = self._checked_setup(setup)
        skip = None if skip_layers is None else self._checked_skip(skip_layers)
        with self._store.override(normalized, skip):
            yield

    @property
    def skip_layers(self) -> tuple[int, ...]:
        """The layers whose adapters this model leaves out in every call (AdapterDrop), sorted."""
        return tuple(sorted(self._store.current_skip()))

    def set_skip_layers(self, layers: Any) -> None:
        """AdapterDrop (Rücklé et al. 2021): leave the adapters of ``layers`` (transformer layer indices, e.g.
        ``range(k)`` for the first ``k``) out of every forward pass, so those layers cost what the bare model's do;
        ``None`` or ``[]`` runs every layer again. Attachment points inside a skipped layer keep their base value
        whatever the setup; embedding points (outside the layers) still run. Refused while an adapter is merged
        (its update is in the weights of every layer)."""
        self._store.skip_layers = self._checked_skip(layers or ())

    def _checked_skip(self, layers: Any) -> frozenset[int]:
        if self._store.merged and layers:
            raise ConfigError(
                f"Adapter(s) {list(self._store.merged)} are merged into the base weights of every layer, so "
                "skip_layers cannot leave them out; call model.unmerge_adapter() first."
            )
        count = len(self._layers()) if self._spec.layers else 0
        if (
            not isinstance(layers, Iterable)
            or isinstance(layers, (str, bytes))
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
        ):
            raise ConfigError(f"skip_layers must be a list of layer indices, got {layers!r}.")
        wrong = sorted(i for i in layers if not 0 <= i < count)
        if wrong:
            raise ConfigError(
                f"skip_layers names layer(s) {wrong}, but the model has {count} layers (indices 0..{count - 1})."
            )
        return frozenset(layers)

    # ------------------------------------------------------------------ compatibility
    def _conv_mismatches(self, info: ModelInfo) -> list[str]:
        """The declared ``nn.Conv2d`` / ``nn.Conv1d`` targets (``ModelInfo.conv_modules``) whose input channels or
        kernel differ from this model's module: a flattened kernel of equal size would otherwise be reshaped
        wrongly."""
        out = []
        for path, (c_in, kernel) in info.conv_modules.items():
            try:
                module = self._module().get_submodule(path)
            except AttributeError:
                continue  # not in this model: targeting names the missing module
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                mine = (module.in_channels, tuple(module.kernel_size))
                if mine != (c_in, tuple(kernel)):
                    out.append(
                        f"an nn.{type(module).__name__} {path!r} of {c_in} input channels and kernel {tuple(kernel)} (this model: "
                        f"{mine[0]} and {mine[1]})"
                    )
        return out

    def _check_compatible(self, info: ModelInfo, what: str, dims: ModelDims | None = None) -> None:
        """Raise IncompatibleModelError when ``info`` (an adapter's or fusion's file) names another kind or size of
        model than this one (``dims``: this model's ``model_dims()``, computed when not given)."""
        mine = self.model_info(dims)
        problems = []
        if info.model_type != mine.model_type:
            problems.append(f"model type {info.model_type!r} (this model: {mine.model_type!r})")
        if info.hidden_size != mine.hidden_size:
            problems.append(f"hidden size {info.hidden_size} (this model: {mine.hidden_size})")
        if info.num_layers is not None and info.num_layers != mine.num_layers:
            problems.append(f"{info.num_layers} layers (this model: {mine.num_layers})")
        elif info.decoder_start is not None and info.decoder_start != mine.decoder_start:
            problems.append(f"{info.decoder_start} encoder layers (this model: {mine.decoder_start})")
        if info.stack_widths and info.stack_widths != mine.stack_widths:  # files that state them
            problems.append(f"layer stacks of widths {_widths_text(info)} (this model: {_widths_text(mine)})")
        problems += self._conv_mismatches(info)
        if problems:
            raise IncompatibleModelError(
                f"The {what} was made for a model with {', '.join(problems)}. Load it into a model of that kind "
                f"({info.model_name or info.model_type})."
            )
        named_model = mine.model_name and not Path(mine.model_name).exists()  # a hub name, not a local folder
        if info.model_name and named_model and Path(info.model_name).name != Path(mine.model_name).name:
            warnings.warn(
                f"The {what} was trained on {info.model_name!r}; this model is {mine.model_name!r}. Shapes match, "
                "but outputs may be poor if the weights differ.",
                stacklevel=3,
            )
