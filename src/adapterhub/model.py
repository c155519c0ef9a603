"""The user-facing surface: ``adapterhub.init(model)`` adds the adapter API to a loaded transformers model.

``init`` attaches an ``AdapterStore`` (the adapters, heads and fusions as ordinary submodules, so optimisers,
``.to()``, DDP and state dicts see them) and forward hooks at the sites named by the model's ``ArchitectureSpec``.
The model's class gets ``AdapterModelMixin`` as an extra base for the API methods only; no forward is replaced.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapterhub.architectures import ArchitectureSpec, get_layers, spec_for_model_type
from adapterhub.composition import (
    ParallelGenerationMixin,
    Setup,
    SiteRun,
    branch_names,
    install_composition_hooks,
    normalize_setup,
    parallel_block,
    run_setup,
    setup_names,
)
from adapterhub.configs import MethodConfig, resolve_config
from adapterhub.errors import (
    AdapterExistsError,
    AdapterFileError,
    AdapterNotFoundError,
    ConfigError,
    IncompatibleModelError,
    did_you_mean,
)
from adapterhub.fusion_api import FusionMixin
from adapterhub.heads import HEADS, Head, static_head_parameters
from adapterhub.heads.api import check_name
from adapterhub.heads.base import head_class
from adapterhub.heads.routing import install_head_routing
from adapterhub.injection import SiteInjector
from adapterhub.io.records import AdapterRecord, HeadRecord, ModelInfo
from adapterhub.io.validate import check_state_fits
from adapterhub.methods import AdapterModule, ModelDims, SiteInputs, method_for_config
from adapterhub.summary import AdapterSummary, summarize

STORE_ATTR = "_adapterhub"


class AdapterStore(nn.Module):
    """Holds every adapter, head and fusion of one model, and the active setup."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        self.active_setup: Setup | None = None
        self.active_head_name: str | None = None
        self._override: contextvars.ContextVar[tuple[Setup | None] | None] = contextvars.ContextVar(
            f"adapterhub_setup_{id(self)}", default=None
        )
        self._overrides_open = 0  # `with adapter_setup(...)` blocks open in any thread
        self._count_lock = threading.Lock()
        self.injector: SiteInjector | None = None
        self.captured_base_output: Any = None
        self.pending_labels: torch.Tensor | None = None

    # ---- SiteHandler protocol (called from the hooks)
    def current_setup(self) -> Setup | None:
        if self._overrides_open == 0:  # fast path, and traceable by torch.compile
            return self.active_setup
        override = self._override.get()
        return override[0] if override is not None else self.active_setup

    def is_active(self) -> bool:
        return self.current_setup() is not None

    def site_forward(self, layer: int, site: str, inputs: SiteInputs) -> torch.Tensor | None:
        setup = self.current_setup()
        if setup is None:
            return None
        run = SiteRun(layer=layer, site=site, adapters=self.adapters, extras={"fusions": self.fusions})  # type: ignore[arg-type]
        return run_setup(run, setup, inputs)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else dict(self.__dict__)
        state = dict(state)
        for transient in ("_override", "_count_lock"):
            state.pop(transient, None)
        state["_overrides_open"] = 0
        state["captured_base_output"] = state["pending_labels"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._override = contextvars.ContextVar(f"adapterhub_setup_{id(self)}", default=None)
        self._count_lock = threading.Lock()

    @contextlib.contextmanager
    def override(self, setup: Setup | None) -> Iterator[None]:
        token = self._override.set((setup,))
        with self._count_lock:
            self._overrides_open += 1
        try:
            yield
        finally:
            self._override.reset(token)
            with self._count_lock:
                self._overrides_open -= 1


class AdapterModelMixin(FusionMixin):  # FusionMixin extends HeadsMixin
    """Adapter API added to a transformers model by ``adapterhub.init``."""

    # ------------------------------------------------------------------ internals
    @property
    def _store(self) -> AdapterStore:
        return getattr(self, STORE_ATTR)  # type: ignore[no-any-return]

    @property
    def _spec(self) -> ArchitectureSpec:
        return spec_for_model_type(self.config.model_type)  # type: ignore[attr-defined]

    def model_dims(self) -> ModelDims:
        spec = self._spec
        config = self.config  # type: ignore[attr-defined]
        hidden = getattr(config, spec.hidden_size_attr, None) or config.hidden_size
        return ModelDims(
            model_type=config.model_type,
            hidden_size=int(hidden),
            num_layers=len(get_layers(self, spec)),  # type: ignore[arg-type]
            pre_norm=spec.pre_norm,
        )

    def model_info(self) -> ModelInfo:
        dims = self.model_dims()
        return ModelInfo(
            model_type=dims.model_type,
            model_name=str(getattr(self.config, "name_or_path", "") or ""),  # type: ignore[attr-defined]
            hidden_size=dims.hidden_size,
            num_layers=dims.num_layers,
        )

    def _place(self, module: nn.Module) -> nn.Module:
        """Put a new module on the device and floating dtype of the model's layers, in the model's train/eval
        mode (a head added to a model in eval mode must not apply dropout)."""
        reference = next(get_layers(self, self._spec).parameters())  # type: ignore[arg-type]
        module.train(self.training)  # type: ignore[attr-defined]
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

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> dict[str, MethodConfig]:
        """Name -> config of every adapter on the model, in the order they were added."""
        return {name: module.config for name, module in self._store.adapters.items()}  # type: ignore[misc]

    def has_adapter(self, name: str) -> bool:
        return name in self._store.adapters

    def add_adapter(
        self,
        name: str,
        config: str | Mapping[str, Any] | MethodConfig | None = None,
        *,
        overwrite_ok: bool = False,
        set_active: bool = False,
    ) -> MethodConfig:
        """Add a new adapter (initialised near identity). ``config``: a preset name such as ``"pfeiffer"``,
        ``"houlsby[reduction_factor=64]"``, a dict, or a config object. Returns the resolved config."""
        check_name(name)
        resolved = resolve_config(config)
        if name in self._store.adapters and not overwrite_ok:
            raise AdapterExistsError(
                f"An adapter named {name!r} already exists. Pass overwrite_ok=True to replace it, "
                "or delete it first with model.delete_adapter(name)."
            )
        module = method_for_config(resolved)(name, resolved, self.model_dims())  # validates before any change
        self._store.adapters[name] = self._place(module)
        if set_active:
            self.set_active_adapters(name)
        return resolved

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter (and drop it from the active setup)."""
        self._require_adapter(name)
        store = self._store
        if name in setup_names(store.active_setup):
            store.active_setup = None
        del store.adapters[name]

    # ------------------------------------------------------------------ activation
    @property
    def active_adapters(self) -> Setup | None:
        """The setup applied in every forward pass: a name, a block such as ``Stack("a", "b")``, or None."""
        return self._store.current_setup()

    @active_adapters.setter
    def active_adapters(self, setup: Any) -> None:
        self.set_active_adapters(setup)

    def set_active_adapters(self, setup: Any) -> None:
        normalized = normalize_setup(setup)
        for name in setup_names(normalized):
            self._require_adapter(name)
        self._store.active_setup = normalized

    @contextlib.contextmanager
    def adapter_setup(self, setup: Any) -> Iterator[None]:
        """Use ``setup`` for forward passes inside the ``with`` block only (per thread / async task)."""
        normalized = normalize_setup(setup)
        for name in setup_names(normalized):
            self._require_adapter(name)
        with self._store.override(normalized):
            yield

    # ------------------------------------------------------------------ training
    def freeze_model(self, freeze: bool = True) -> None:
        """Set ``requires_grad = not freeze`` on every parameter of the base model and its built-in head."""
        for name, param in self.named_parameters():  # type: ignore[attr-defined]
            if not name.startswith(STORE_ATTR + "."):
                param.requires_grad_(not freeze)

    def train_adapter(self, setup: Any, *, train_head: bool = True) -> None:
        """Freeze the base model and every other adapter, unfreeze the named adapter(s) and their head, activate
        them and switch to training mode.

        The head trained is the flexible head named like the last adapter of the setup if there is one, else the
        model's built-in head (``classifier`` etc.)."""
        normalized = normalize_setup(setup)
        names = setup_names(normalized)
        if not names:
            raise ConfigError("train_adapter needs at least one adapter name.")
        for name in names:
            self._require_adapter(name)
        for param in self.parameters():  # type: ignore[attr-defined]
            param.requires_grad_(False)
        for name in names:
            self._store.adapters[name].requires_grad_(True)
        self.set_active_adapters(normalized)
        if train_head:
            parallel = parallel_block(normalized)
            if parallel is not None:  # one head per branch
                for branch in branch_names(parallel):
                    if branch in self._store.heads:
                        self._store.heads[branch].requires_grad_(True)
                self.train()  # type: ignore[attr-defined]
                return
            head = self._store.heads[names[-1]] if names[-1] in self._store.heads else None  # noqa: SIM401 (ModuleDict has no .get)
            if head is not None:
                head.requires_grad_(True)
            else:
                for param in static_head_parameters(self).values():  # type: ignore[arg-type]
                    param.requires_grad_(True)
        self.train()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ summary
    def adapter_summary(self) -> AdapterSummary:
        """A table of adapters and heads: name, method, parameters, % of the base model, active, trainable."""
        return summarize(self)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ save / load
    def _head_record(self, name: str) -> HeadRecord | None:
        store = self._store
        if name in store.heads:
            head: Head = store.heads[name]  # type: ignore[assignment]
            return HeadRecord(name, head.head_type, head.options(), head.id2label, head.state_dict())
        static = static_head_parameters(self)  # type: ignore[arg-type]
        if not static:
            return None
        config = self.config  # type: ignore[attr-defined]
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()} or None
        return HeadRecord(
            name,
            "static",
            {"parameters": {k: list(p.shape) for k, p in static.items()}, "model_class": type(self).__name__},
            id2label,
            {k: p.detach() for k, p in static.items()},
        )

    def adapter_record(self, name: str, *, with_head: bool = True) -> AdapterRecord:
        module = self._require_adapter(name)
        return AdapterRecord(
            name=name,
            config=module.config.to_dict(),
            model=self.model_info(),
            tensors=dict(module.state_dict()),
            head=self._head_record(name) if with_head else None,
        )

    def save_adapter(
        self,
        directory: str | os.PathLike[str],
        name: str,
        *,
        with_head: bool = True,
        layout: str = "adapterhub",
    ) -> Path:
        """Save adapter ``name`` (and its head with label map) to ``directory``.

        ``layout="adapterhub"`` (default): JSON + safetensors (docs/FORMAT.md). ``layout="adapters"``: the
        `adapters` library's layout, loadable by that library."""
        record = self.adapter_record(name, with_head=with_head)
        if layout == "adapterhub":
            from adapterhub.io.adapter_dir import write_adapter_dir

            return write_adapter_dir(record, directory)
        if layout == "adapters":
            from adapterhub.io.adapters_lib import write_adapters_lib_dir

            return write_adapters_lib_dir(record, directory, self._spec, self)  # type: ignore[arg-type]
        raise ConfigError(f"Unknown layout {layout!r}; use 'adapterhub' or 'adapters'.")

    def save_all_adapters(self, directory: str | os.PathLike[str], *, with_head: bool = True) -> list[Path]:
        return [
            self.save_adapter(Path(directory) / name, name, with_head=with_head)
            for name in self._store.adapters
        ]

    def load_adapter(
        self,
        source: str | os.PathLike[str],
        *,
        load_as: str | None = None,
        set_active: bool = False,
        with_head: bool = True,
        overwrite_ok: bool = False,
        **hub_options: Any,
    ) -> str:
        """Load an adapter from a directory (ours or the `adapters` library's layout) or a hub identifier such as
        ``"sentiment/rotten_tomatoes@demo"``. Everything is checked before the model is changed: on any error
        the model is left as it was. Returns the adapter's name."""
        from adapterhub.io.loading import read_any_adapter_dir

        directory = Path(source)
        if not directory.is_dir():
            directory = self._resolve_remote(str(source), **hub_options)
        record = read_any_adapter_dir(directory, spec=self._spec, with_head=with_head)
        return self.add_adapter_from_record(
            record, load_as=load_as, set_active=set_active, with_head=with_head, overwrite_ok=overwrite_ok
        )

    def push_adapter(
        self,
        name: str,
        *,
        owner: str,
        task: str | None = None,
        subtask: str | None = None,
        with_head: bool = True,
        **card: Any,
    ) -> dict[str, Any]:
        """Publish adapter ``name`` (with its head) to the hub as the next version of ``@owner/name``.

        ``card`` holds the rest of the adapter card (``license``, ``description``, ``citation``, ``metrics``,
        ``language``, ``adapter_type``, ``token``, ``hub_url``; see ``adapterhub.hub.client.push_adapter_dir``)."""
        from adapterhub.hub.client import push_adapter_dir

        with tempfile.TemporaryDirectory(prefix="adapterhub-push-") as tmp:
            directory = self.save_adapter(Path(tmp) / name, name, with_head=with_head)
            return push_adapter_dir(directory, owner=owner, name=name, task=task, subtask=subtask, **card)

    def _resolve_remote(self, identifier: str, **hub_options: Any) -> Path:
        looks_local = os.sep in identifier and "@" not in identifier and ":" not in identifier
        if looks_local or identifier.startswith((".", "~")):
            raise AdapterFileError(
                f"No adapter directory at {identifier!r} (it does not exist or is not a directory)."
            )
        try:
            from adapterhub.hub.client import resolve_to_local_dir
        except ImportError as error:
            raise AdapterFileError(
                f"{identifier!r} is not a local directory, and the hub client is not available ({error}). "
                "Pass the path of a saved adapter directory, or install adapterhub[hub]."
            ) from None
        info = self.model_info()
        return resolve_to_local_dir(
            identifier,
            model_type=info.model_type,
            model_name=info.model_name,
            hidden_size=info.hidden_size,
            **hub_options,
        )

    def add_adapter_from_record(
        self,
        record: AdapterRecord,
        *,
        load_as: str | None = None,
        set_active: bool = False,
        with_head: bool = True,
        overwrite_ok: bool = False,
    ) -> str:
        name = check_name(load_as or record.name)
        if name in self._store.adapters and not overwrite_ok:
            raise AdapterExistsError(
                f"An adapter named {name!r} already exists. Pass overwrite_ok=True to replace it or load_as='other-name'."
            )
        self._check_compatible(record.model, f"adapter {record.name!r}")
        config = resolve_config(record.config)
        module = method_for_config(config)(name, config, self.model_dims())
        _load_exact(module, record.tensors, f"adapter {record.name!r}")
        apply_head = self._prepare_head(record.head, name) if with_head and record.head is not None else None
        # every check passed: change the model
        self._store.adapters[name] = self._place(module)
        if apply_head is not None:
            apply_head()
        if set_active:
            self.set_active_adapters(name)
        return name

    def _check_compatible(self, info: ModelInfo, what: str) -> None:
        mine = self.model_info()
        problems = []
        if info.model_type != mine.model_type:
            problems.append(f"model type {info.model_type!r} (this model: {mine.model_type!r})")
        if info.hidden_size != mine.hidden_size:
            problems.append(f"hidden size {info.hidden_size} (this model: {mine.hidden_size})")
        if info.num_layers is not None and info.num_layers != mine.num_layers:
            problems.append(f"{info.num_layers} layers (this model: {mine.num_layers})")
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

    def _prepare_head(self, record: HeadRecord, name: str) -> Any:
        """Check a saved head against this model; return a function that installs it (or raise)."""
        if record.head_type == "static":
            static = static_head_parameters(self)  # type: ignore[arg-type]
            wanted = {k: tuple(v.shape) for k, v in record.tensors.items()}
            have = {k: tuple(p.shape) for k, p in static.items()}
            if wanted != have:
                raise IncompatibleModelError(
                    f"The adapter's head is the built-in head of a {record.options.get('model_class', 'model')} with "
                    f"parameters {wanted}; this model's built-in head has {have}. Create the model with the same class "
                    f"and num_labels={len(record.id2label or {}) or '?'}, or load with with_head=False."
                )

            def install_static() -> None:
                with torch.no_grad():
                    for key, tensor in record.tensors.items():
                        static[key].copy_(tensor.to(static[key].dtype))
                if record.id2label:
                    self.config.id2label = dict(record.id2label)  # type: ignore[attr-defined]
                    self.config.label2id = {v: k for k, v in record.id2label.items()}  # type: ignore[attr-defined]

            return install_static
        if record.head_type not in HEADS:
            raise ConfigError(
                f"The adapter's head has type {record.head_type!r}, which this version does not know."
            )
        try:
            head = head_class(record.head_type)(
                name, self.model_dims().hidden_size, id2label=record.id2label, **record.options
            )
        except TypeError as error:
            raise AdapterFileError(
                f"The saved head config has options this version does not accept: {error}."
            ) from None
        _load_exact(head, record.tensors, f"head {record.name!r}")
        head.check_model(self)  # type: ignore[arg-type]

        def install_head() -> None:
            self._install_head(name, head)

        return install_head

    # ------------------------------------------------------------------ base model save
    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        """The base model's ``save_pretrained`` without adapterhub's modules (save those with ``save_adapter``).

        Warns when trainable adapters or heads are left out (e.g. a stock ``transformers.Trainer`` checkpoint
        during adapter training): use ``adapterhub.training.AdapterTrainer``, whose checkpoints hold them."""
        if "state_dict" not in kwargs:
            kwargs["state_dict"] = {
                k: v
                for k, v in self.state_dict().items()  # type: ignore[attr-defined]
                if not k.startswith(STORE_ATTR + ".")
            }
            named = list(self.named_parameters())  # type: ignore[attr-defined]
            left_out = [n for n, p in named if n.startswith(STORE_ATTR + ".") and p.requires_grad]
            base_frozen = not any(p.requires_grad for n, p in named if not n.startswith(STORE_ATTR + "."))
            if left_out and base_frozen:  # adapter training (train_adapter): these weights are the point
                warnings.warn(
                    f"save_pretrained saves the base model only; {len(left_out)} trainable adapter/head tensors are "
                    "not in it. Save them with model.save_adapter(dir, name), or train with "
                    "adapterhub.training.AdapterTrainer, whose checkpoints hold adapters and heads.",
                    stacklevel=2,
                )
        return super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]


def _load_exact(module: nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``tensors`` into ``module`` after checking that names and shapes match exactly."""
    expected = module.state_dict()
    check_state_fits(expected, tensors, what)
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)


# ---------------------------------------------------------------------------------------------------- init

_MIXED_CLASSES: dict[type, type] = {}


def _with_mixin(cls: type) -> type:
    if issubclass(cls, AdapterModelMixin):
        return cls
    if cls not in _MIXED_CLASSES:
        generates = callable(getattr(cls, "generate", None))
        mixed = type(
            cls.__name__,
            (AdapterModelMixin, ParallelGenerationMixin, cls) if generates else (AdapterModelMixin, cls),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
        _MIXED_CLASSES[cls] = mixed
    return _MIXED_CLASSES[cls]


def init(model: nn.Module) -> nn.Module:
    """Add the adapter API to ``model`` in place and return it. Calling it again does nothing."""
    if isinstance(getattr(model, "_modules", {}).get(STORE_ATTR), AdapterStore):
        return model
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise ConfigError(
            f"adapterhub.init expects a transformers PreTrainedModel (with .config.model_type), got {type(model).__name__}."
        )
    spec = spec_for_model_type(config.model_type)
    get_layers(model, spec)  # fails early with a clear message if the spec does not fit
    store = AdapterStore()
    model.add_module(STORE_ATTR, store)
    model.__class__ = _with_mixin(type(model))
    store.injector = SiteInjector(model, spec, store)
    install_head_routing(model, store)
    install_composition_hooks(
        model, store
    )  # Parallel (batch replication, per-branch heads), fusion regulariser
    return model
