"""The head half of the model API: add, delete and choose flexible prediction heads."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from adapterhub.errors import (
    AdapterExistsError,
    AdapterFileError,
    AdapterNotFoundError,
    ConfigError,
    IncompatibleModelError,
    did_you_mean,
)
from adapterhub.heads.base import HEADS, Head, head_class
from adapterhub.heads.static import static_head_parameters
from adapterhub.runtime.core import AdapterModelCore, load_exact
from adapterhub.runtime.parallel import ParallelGenerationMixin
from adapterhub.runtime.records import HeadRecord
from adapterhub.spec.composition import setup_names

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_POOLED_TYPES = ("classification", "regression", "multilabel", "multiple_choice")
_LM_TYPES = ("causal_lm", "masked_lm")
_GENERATION_CLASSES: dict[type, type] = {}


def check_name(name: Any, what: str = "adapter") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"Invalid {what} name {name!r}: use letters, digits, '-' and '_' (starting with a letter or digit)."
        )
    return name


def generation_class(cls: type) -> type:
    """``cls`` with the transformers ``GenerationMixin`` (and ``generate()`` under Parallel) as extra bases."""
    from transformers.generation import GenerationMixin

    if issubclass(cls, GenerationMixin):
        return cls
    if cls not in _GENERATION_CLASSES:
        _GENERATION_CLASSES[cls] = type(
            cls.__name__,
            (ParallelGenerationMixin, cls, GenerationMixin),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
    return _GENERATION_CLASSES[cls]


def enable_generation(model: nn.Module) -> None:
    """Give a model without ``generate()`` (a bare ``GPT2Model``) the transformers ``GenerationMixin``, so that a
    flexible causal-LM head can generate. The instance's class gets one more base; nothing else changes."""
    from transformers import GenerationConfig

    model.__class__ = generation_class(type(model))
    if getattr(model, "generation_config", None) is None:
        config: Any = model.config
        model.generation_config = GenerationConfig.from_model_config(config)  # type: ignore[assignment]


class HeadsMixin(AdapterModelCore):
    """Methods mixed into the model by ``adapterhub.init``; the heads live in ``model._adapterhub.heads``."""

    # ------------------------------------------------------------------ heads
    @property
    def heads(self) -> dict[str, Head]:
        return dict(self._store.heads.items())  # type: ignore[arg-type]

    def _install_head(self, name: str, head: Head) -> None:
        """Put ``head`` on the model under ``name`` (on the model's device and dtype)."""
        self._check_heads()
        if self._spec.decoder is not None and self._spec.decoder.cross_attention is None:
            raise ConfigError(
                f"Flexible heads read one stack's hidden states; {self._model_type} has two towers (CLIPModel: "
                "text and vision). Train and predict with adapterhub.clip_contrastive_loss and "
                "adapterhub.zero_shot_classify, or put a head on one tower's own model "
                "(CLIPVisionModelWithProjection)."
            )
        if self._spec.decoder is not None:
            raise ConfigError(
                f"Flexible heads read one stack's hidden states and its attention mask; {self._model_type} "
                "is an encoder-decoder model, whose output is the decoder's states over decoder_input_ids. Use the "
                "model's own head: load it with AutoModelForSeq2SeqLM (generation) or a task class of transformers."
            )
        self._store.heads[name] = self._place(head)
        if head.head_type == "causal_lm":
            enable_generation(self._module())

    def _head_defaults(self, head_type: str, options: dict[str, Any]) -> None:
        if head_type in _POOLED_TYPES:
            options.setdefault("pooling", "last" if self._spec.pre_norm else "first")
        if head_type in _LM_TYPES:
            from adapterhub.runtime.head_inputs import output_embedding_matrix

            vocab: int | None
            width: int | None
            try:
                vocab, width = output_embedding_matrix(self._module()).shape
            except IncompatibleModelError:
                vocab, width = getattr(self.config, "vocab_size", None), None
            options.setdefault("vocab_size", int(vocab) if vocab is not None else None)
            if width is not None:
                options.setdefault("embedding_size", int(width))

    def add_head(
        self, name: str, head_type: str = "classification", *, overwrite_ok: bool = False, **options: Any
    ) -> Head:
        """Add a flexible prediction head on top of the base model's hidden states.

        ``head_type``: classification, regression, multilabel, tagging, multiple_choice, question_answering,
        causal_lm, masked_lm (or any type registered with ``@register_head``). The head is used while it is active:
        named like the last active adapter, or chosen with ``model.active_head = name``."""
        check_name(name, "head")
        self._check_heads()
        if name in self._store.heads and not overwrite_ok:
            raise AdapterExistsError(
                f"A head named {name!r} already exists; pass overwrite_ok=True to replace it."
            )
        cls = head_class(head_type)
        self._head_defaults(head_type, options)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "name", "hidden_size"}
        takes_any = any(
            p.kind is inspect.Parameter.VAR_KEYWORD
            for p in inspect.signature(cls.__init__).parameters.values()
        )
        unknown = sorted(set(options) - accepted)
        if unknown and not takes_any:
            raise ConfigError(
                f"Unknown option(s) {', '.join(unknown)} for a {head_type} head; it accepts: "
                f"{', '.join(sorted(accepted))}."
            )
        try:
            head = cls(name, self.model_dims().hidden_size, **options)
        except TypeError as error:
            raise ConfigError(f"Bad option for a {head_type} head: {error}.") from None
        head.check_model(self._module())
        head.init_from_model(self._module())
        self._install_head(name, head)
        return head

    def add_classification_head(
        self,
        name: str,
        num_labels: int = 2,
        *,
        id2label: Mapping[int, str] | None = None,
        multilabel: bool = False,
        overwrite_ok: bool = False,
        **options: Any,
    ) -> Head:
        """Sequence classification (cross-entropy); ``num_labels=1`` is regression (mean squared error),
        ``multilabel=True`` one sigmoid per label (binary cross-entropy)."""
        return self.add_head(
            name,
            "classification",
            num_labels=num_labels,
            id2label=id2label,
            multilabel=multilabel,
            overwrite_ok=overwrite_ok,
            **options,
        )

    def add_regression_head(self, name: str, *, overwrite_ok: bool = False, **options: Any) -> Head:
        """One real-valued output per example, mean squared error loss."""
        return self.add_head(name, "regression", overwrite_ok=overwrite_ok, **options)

    def add_multilabel_head(
        self,
        name: str,
        num_labels: int,
        *,
        id2label: Mapping[int, str] | None = None,
        overwrite_ok: bool = False,
        **options: Any,
    ) -> Head:
        """Independent yes/no decisions per label; ``labels`` (batch, num_labels) of 0/1."""
        return self.add_head(
            name, "multilabel", num_labels=num_labels, id2label=id2label, overwrite_ok=overwrite_ok, **options
        )

    def add_tagging_head(
        self,
        name: str,
        num_labels: int,
        *,
        id2label: Mapping[int, str] | None = None,
        overwrite_ok: bool = False,
        **options: Any,
    ) -> Head:
        """One label per token; ``labels`` (batch, seq), ``-100`` and padding are ignored."""
        return self.add_head(
            name, "tagging", num_labels=num_labels, id2label=id2label, overwrite_ok=overwrite_ok, **options
        )

    def add_multiple_choice_head(
        self, name: str, num_choices: int | None = None, *, overwrite_ok: bool = False, **options: Any
    ) -> Head:
        """Score each choice of inputs shaped (batch, n_choices, seq); ``labels`` (batch,) the right choice."""
        return self.add_head(
            name, "multiple_choice", num_choices=num_choices, overwrite_ok=overwrite_ok, **options
        )

    def add_qa_head(self, name: str, *, overwrite_ok: bool = False, **options: Any) -> Head:
        """Extractive question answering: start/end scores per token, loss from ``start_positions`` and
        ``end_positions``."""
        return self.add_head(name, "question_answering", overwrite_ok=overwrite_ok, **options)

    def add_causal_lm_head(
        self, name: str, *, tie_weights: bool = True, overwrite_ok: bool = False, **options: Any
    ) -> Head:
        """Next-token prediction (decoders); tied to the model's embedding matrix unless ``tie_weights=False``.
        Makes ``model.generate()`` available, also on a bare ``AutoModel``."""
        return self.add_head(name, "causal_lm", tie_weights=tie_weights, overwrite_ok=overwrite_ok, **options)

    def add_masked_lm_head(
        self, name: str, *, tie_weights: bool = True, overwrite_ok: bool = False, **options: Any
    ) -> Head:
        """Masked-token prediction (encoders); tied to the model's embedding matrix unless ``tie_weights=False``."""
        return self.add_head(name, "masked_lm", tie_weights=tie_weights, overwrite_ok=overwrite_ok, **options)

    def delete_head(self, name: str) -> None:
        if name not in self._store.heads:
            raise AdapterNotFoundError(
                f"No head named {name!r}{did_you_mean(name, self._store.heads.keys())}."
            )
        del self._store.heads[name]
        if self._store.active_head_name == name:
            self._store.active_head_name = None

    @property
    def active_head(self) -> str | None:
        """The flexible head used for outputs: set explicitly, else the one named like the last active adapter
        (None under ``Parallel``: one head per branch, see ``adapterhub.runtime.parallel.ParallelOutput``)."""
        return self._store.active_head()

    @active_head.setter
    def active_head(self, name: str | None) -> None:
        if name is not None and name not in self._store.heads:
            raise AdapterNotFoundError(
                f"No head named {name!r}{did_you_mean(name, self._store.heads.keys())}."
            )
        self._store.active_head_name = name

    def _unfreeze_active_head(self) -> None:
        """Make the active flexible head trainable, else the model's built-in head."""
        head_name = self.active_head
        if head_name is not None:
            self._store.heads[head_name].requires_grad_(True)
            return
        adapters = self._store.adapter_modules()
        names = [n for n in setup_names(self.active_adapters) if n in adapters]
        saved = [p for n in names for p in adapters[n].saved_paths()]
        for param in _outside(static_head_parameters(self._module()), saved).values():
            param.requires_grad_(True)  # not the modules the adapters keep copies of (modules_to_save)

    # ------------------------------------------------------------------ saving and loading heads
    def _head_record(self, name: str) -> HeadRecord | None:
        """The flexible head ``name``, else the model's built-in head (None when it has none), as a record."""
        store = self._store
        if name in store.heads:
            head: Head = store.heads[name]  # type: ignore[assignment]
            return HeadRecord(name, head.head_type, head.options(), head.id2label, head.state_dict())
        static = static_head_parameters(self._module())
        adapter = store.adapter_modules().get(name)
        static = _outside(static, adapter.saved_paths() if adapter is not None else ())
        if not static:
            return None  # (the adapter's own copies of the head are in its tensors)
        config = self.config
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()} or None
        return HeadRecord(
            name,
            "static",
            {"parameters": {k: list(p.shape) for k, p in static.items()}, "model_class": type(self).__name__},
            id2label,
            {k: p.detach() for k, p in static.items()},
        )

    def _prepare_head(self, record: HeadRecord, name: str, *, overwrite_ok: bool = False) -> Any:
        """Check a saved head against this model; return a function that installs it (or raise). A flexible head
        of the same name is replaced only with ``overwrite_ok``."""
        if record.head_type == "static":
            static = static_head_parameters(self._module())
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
                    self.config.id2label = dict(record.id2label)
                    self.config.label2id = {v: k for k, v in record.id2label.items()}

            return install_static
        if name in self._store.heads and not overwrite_ok:
            raise AdapterExistsError(
                f"The model already has a head named {name!r}; pass overwrite_ok=True to replace it, load_as='other' "
                "to load under another name, or with_head=False to keep the current head."
            )
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
        load_exact(head, record.tensors, f"head {record.name!r}")
        head.check_model(self._module())

        def install_head() -> None:
            self._install_head(name, head)

        return install_head

    @property
    def accepts_loss_kwargs(self) -> bool:
        """Read by the transformers ``Trainer``: whether the model's loss is already normalised by
        ``num_items_in_batch``. Flexible heads average their own loss, so the Trainer must scale it for gradient
        accumulation itself; otherwise the model class decides, as it would without adapterhub."""
        if self.active_head is not None:
            return False
        for klass in type(self).__mro__:
            if klass is HeadsMixin:
                continue
            if "accepts_loss_kwargs" in vars(klass):
                value = vars(klass)["accepts_loss_kwargs"]
                if isinstance(value, bool):
                    return value
        parameters = inspect.signature(self._module().forward).parameters
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _outside(params: dict[str, Any], paths: Any) -> dict[str, Any]:
    """``params`` without those of the modules at ``paths`` (or inside them)."""
    return {k: v for k, v in params.items() if not any(k.startswith(p + ".") for p in paths)}
