"""The head half of the model API: add, delete and choose flexible prediction heads."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from adapterhub.errors import AdapterExistsError, AdapterNotFoundError, ConfigError, did_you_mean
from adapterhub.heads.base import Head, head_class

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def check_name(name: Any, what: str = "adapter") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"Invalid {what} name {name!r}: use letters, digits, '-' and '_' (starting with a letter or digit)."
        )
    return name


class HeadsMixin:
    """Methods mixed into the model by ``adapterhub.init``; the heads live in ``model._adapterhub.heads``."""

    # ------------------------------------------------------------------ heads
    @property
    def heads(self) -> dict[str, Head]:
        return dict(self._store.heads.items())  # type: ignore[arg-type]

    def add_head(
        self, name: str, head_type: str = "classification", *, overwrite_ok: bool = False, **options: Any
    ) -> Head:
        """Add a flexible prediction head on top of the base model's hidden states (see ``adapterhub.heads``)."""
        check_name(name, "head")
        if name in self._store.heads and not overwrite_ok:
            raise AdapterExistsError(
                f"A head named {name!r} already exists; pass overwrite_ok=True to replace it."
            )
        spec_pooling = "last" if self._spec.pre_norm else "first"
        cls = head_class(head_type)
        if head_type == "classification":
            options.setdefault("pooling", spec_pooling)
        try:
            head = cls(name, self.model_dims().hidden_size, **options)
        except TypeError as error:
            raise ConfigError(f"Bad option for a {head_type} head: {error}.") from None
        self._store.heads[name] = self._place(head)
        return head

    def add_classification_head(
        self,
        name: str,
        num_labels: int = 2,
        *,
        id2label: Mapping[int, str] | None = None,
        overwrite_ok: bool = False,
        **options: Any,
    ) -> Head:
        return self.add_head(
            name,
            "classification",
            num_labels=num_labels,
            id2label=id2label,
            overwrite_ok=overwrite_ok,
            **options,
        )

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
        """The flexible head used for outputs: set explicitly, else the one named like the last active adapter."""
        store = self._store
        if store.active_head_name is not None:
            return store.active_head_name
        setup = store.current_setup()
        if setup is None:
            return None
        last = setup if isinstance(setup, str) else setup.last()
        return last if last in store.heads else None

    @active_head.setter
    def active_head(self, name: str | None) -> None:
        if name is not None and name not in self._store.heads:
            raise AdapterNotFoundError(
                f"No head named {name!r}{did_you_mean(name, self._store.heads.keys())}."
            )
        self._store.active_head_name = name
