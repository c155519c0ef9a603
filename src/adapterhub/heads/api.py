"""The head half of the model API: add, delete and choose flexible prediction heads."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from adapterhub.errors import AdapterExistsError, AdapterNotFoundError, ConfigError, did_you_mean
from adapterhub.heads.base import Head, head_class

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


def enable_generation(model: nn.Module) -> None:
    """Give a model without ``generate()`` (a bare ``GPT2Model``) the transformers ``GenerationMixin``, so that a
    flexible causal-LM head can generate. The instance's class gets one more base; nothing else changes."""
    from transformers import GenerationConfig
    from transformers.generation import GenerationMixin

    from adapterhub.composition import ParallelGenerationMixin

    cls = type(model)
    if not isinstance(model, GenerationMixin):
        if cls not in _GENERATION_CLASSES:
            _GENERATION_CLASSES[cls] = type(
                cls.__name__,
                (ParallelGenerationMixin, cls, GenerationMixin),
                {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
            )
        model.__class__ = _GENERATION_CLASSES[cls]
    if getattr(model, "generation_config", None) is None:
        config: Any = model.config
        model.generation_config = GenerationConfig.from_model_config(config)  # type: ignore[assignment]


class HeadsMixin:
    """Methods mixed into the model by ``adapterhub.init``; the heads live in ``model._adapterhub.heads``."""

    # ------------------------------------------------------------------ heads
    @property
    def heads(self) -> dict[str, Head]:
        return dict(self._store.heads.items())  # type: ignore[attr-defined]

    def _install_head(self, name: str, head: Head) -> None:
        """Put ``head`` on the model under ``name`` (on the model's device and dtype)."""
        self._store.heads[name] = self._place(head)  # type: ignore[attr-defined]
        if head.head_type == "causal_lm":
            enable_generation(self)  # type: ignore[arg-type]

    def _head_defaults(self, head_type: str, options: dict[str, Any]) -> None:
        if head_type in _POOLED_TYPES:
            options.setdefault("pooling", "last" if self._spec.pre_norm else "first")  # type: ignore[attr-defined]
        if head_type in _LM_TYPES:
            from adapterhub.errors import IncompatibleModelError
            from adapterhub.heads.lm import output_embedding_matrix

            vocab: int | None
            width: int | None
            try:
                vocab, width = output_embedding_matrix(self).shape  # type: ignore[arg-type]
            except IncompatibleModelError:
                vocab, width = getattr(self.config, "vocab_size", None), None  # type: ignore[attr-defined]
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
        if name in self._store.heads and not overwrite_ok:  # type: ignore[attr-defined]
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
            head = cls(name, self.model_dims().hidden_size, **options)  # type: ignore[attr-defined]
        except TypeError as error:
            raise ConfigError(f"Bad option for a {head_type} head: {error}.") from None
        head.check_model(self)  # type: ignore[arg-type]
        head.init_from_model(self)  # type: ignore[arg-type]
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
        if name not in self._store.heads:  # type: ignore[attr-defined]
            raise AdapterNotFoundError(
                f"No head named {name!r}{did_you_mean(name, self._store.heads.keys())}."  # type: ignore[attr-defined]
            )
        del self._store.heads[name]  # type: ignore[attr-defined]
        if self._store.active_head_name == name:  # type: ignore[attr-defined]
            self._store.active_head_name = None  # type: ignore[attr-defined]

    @property
    def active_head(self) -> str | None:
        """The flexible head used for outputs: set explicitly, else the one named like the last active adapter."""
        from adapterhub.composition import parallel_block

        store = self._store  # type: ignore[attr-defined]
        setup = store.current_setup()
        if parallel_block(setup) is not None:
            return None  # one head per branch: see adapterhub.composition.ParallelOutput
        if store.active_head_name is not None:
            return store.active_head_name  # type: ignore[no-any-return]
        if setup is None:
            return None
        last = setup if isinstance(setup, str) else setup.last()
        return last if last in store.heads else None

    @active_head.setter
    def active_head(self, name: str | None) -> None:
        if name is not None and name not in self._store.heads:  # type: ignore[attr-defined]
            raise AdapterNotFoundError(
                f"No head named {name!r}{did_you_mean(name, self._store.heads.keys())}."  # type: ignore[attr-defined]
            )
        self._store.active_head_name = name  # type: ignore[attr-defined]

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
        parameters = inspect.signature(self.forward).parameters  # type: ignore[attr-defined]
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
