"""Where a served adapter comes from: ``NAME=SOURCE`` of ``adapterhub serve-model``.

A SOURCE is one of

- a directory holding a saved adapter (our layout, the ``adapters`` library's or peft's);
- a hub identifier such as ``sentiment/sst-2@alice`` or ``@alice/sst-2`` (resolved for the served model by the hub
  client, downloaded once into its cache; ``hub_url`` or ``ADAPTERHUB_HUB_URL`` names the hub);
- ``hf:owner/repo`` (or ``hf:owner/repo@revision``): a repository on the Hugging Face Hub, loaded by
  ``model.load_adapter("owner/repo", source="hf", revision=...)``. That needs the Hugging Face loader; a model API
  without it raises ``SourceError`` saying so.

``fetch`` (a download) and ``prepare`` (read the files, build the adapter's modules and load their tensors, beside
the model) do the slow part and may run on any thread; ``install`` puts the prepared adapter in the model and must
run on the thread that runs the model's forward passes (it is quick).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterHubError, ConfigError

HF_PREFIX = "hf:"


class SourceError(AdapterHubError):
    """An adapter's source cannot be resolved or loaded (missing directory, hub error, unsupported kind)."""


@dataclass(frozen=True)
class AdapterSource:
    """``kind``: ``dir``, ``hub`` or ``hf``; ``location``: the directory, hub identifier or ``owner/repo``."""

    kind: str
    location: str

    def __str__(self) -> str:
        return HF_PREFIX + self.location if self.kind == "hf" else self.location


def parse_source(text: str) -> AdapterSource:
    """Classify a SOURCE string (a directory that exists wins over an identifier of the same spelling)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"An adapter source must be a non-empty string, got {text!r}.")
    text = text.strip()
    if text.startswith(HF_PREFIX):
        repo = text[len(HF_PREFIX) :]
        repo_only = repo.partition("@")[0]
        if repo_only.count("/") != 1 or not all(repo_only.split("/")) or repo.endswith("@"):
            raise ConfigError(f"{text!r}: a Hugging Face source is hf:owner/repo or hf:owner/repo@revision.")
        return AdapterSource("hf", repo)
    if Path(text).expanduser().is_dir():
        return AdapterSource("dir", str(Path(text).expanduser()))
    looks_local = text.startswith((".", "/", "~")) or (os.sep in text and "@" not in text)
    if looks_local:
        return AdapterSource("dir", text)  # fails at load time with the path in the message
    return AdapterSource("hub", text)


def parse_assignment(text: str) -> tuple[str, AdapterSource]:
    """``NAME=SOURCE`` -> ``(name, source)``."""
    name, sep, source = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--adapter takes NAME=SOURCE (e.g. sst2=runs/sst2), got {text!r}.")
    return name.strip(), parse_source(source)


def supports_hf(model: Any) -> bool:
    """Whether this model's ``load_adapter`` can read from the Hugging Face Hub (``source="hf"``)."""
    try:
        parameter = inspect.signature(model.load_adapter).parameters.get("source")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY


def fetch(source: AdapterSource, model: Any, *, hub_url: str | None = None) -> Path | None:
    """Make the adapter available locally: the directory for ``dir`` and ``hub`` sources (a hub download lands in
    the hub client's cache), None for ``hf`` (its loader fetches inside ``install``). Reads the model's info
    only, so it can run beside forward passes."""
    if source.kind == "dir":
        path = Path(source.location).expanduser()
        if not path.is_dir():
            raise SourceError(f"No adapter directory at {source.location!r}.")
        return path
    if source.kind == "hf":
        if not supports_hf(model):
            raise SourceError(
                f"{source}: loading from the Hugging Face Hub needs the Hugging Face loader "
                '(model.load_adapter(..., source="hf")), which this installation does not have. Download the '
                "repository and pass its directory instead."
            )
        return None
    try:
        from adapterhub.hub.client import resolve_to_local_dir
    except ImportError as error:
        raise SourceError(
            f"{source}: the hub client is not available ({error}); install adapterhub[hub]."
        ) from None
    info = model.model_info()
    try:
        return resolve_to_local_dir(
            source.location,
            model_type=info.model_type,
            model_name=info.model_name,
            hidden_size=info.hidden_size,
            hub_url=hub_url,
        )
    except AdapterHubError as error:
        raise SourceError(f"{source}: {error}") from None
    except OSError as error:  # the hub cannot be reached
        raise SourceError(f"{source}: cannot reach the hub ({error}).") from None
    except Exception as error:
        raise SourceError(f"{source}: {type(error).__name__}: {error}") from error


@contextmanager
def _source_errors(source: AdapterSource, name: str) -> Iterator[None]:
    """Any failure inside becomes a ``SourceError`` naming the adapter and its source: this adapter cannot load,
    nothing else is affected."""
    try:
        yield
    except SourceError:
        raise
    except AdapterHubError as error:
        raise SourceError(f"Adapter {name!r} from {source}: {error}") from None
    except Exception as error:  # a corrupt file, a download that failed
        raise SourceError(f"Adapter {name!r} from {source}: {type(error).__name__}: {error}") from error


def prepare(source: AdapterSource, fetched: Path | None, model: Any, name: str) -> Any:
    """Read and build the adapter (with its head) beside the model without changing it
    (``model.prepare_adapter_from_record``): the slow part of a load, for any thread. None for ``hf`` sources
    (their loader changes the model, so all of it happens in ``install``)."""
    if source.kind == "hf":
        return None
    with _source_errors(source, name):
        from adapterhub.io.loading import read_any_adapter_dir
        from adapterhub.spec.architectures import spec_for_model_type

        spec = spec_for_model_type(model.config.model_type)
        record = read_any_adapter_dir(fetched, spec=spec, with_head=True, model=model.model_info())  # type: ignore[arg-type]
        if record.head is not None and record.head.head_type == "static":
            raise SourceError(
                f"Adapter {name!r} from {source} was saved with the built-in head of a "
                f"{record.head.options.get('model_class', 'task model')}; serve-model runs one bare base model and "
                "serves flexible heads. Save it again with a flexible head (model.add_classification_head(...), "
                "see docs/serving.md)."
            )
        return model.prepare_adapter_from_record(record, load_as=name, overwrite_ok=True)


def install(source: AdapterSource, fetched: Path | None, model: Any, name: str, prepared: Any = None) -> None:
    """Load the adapter (with its head) into ``model`` as ``name``: put in ``prepared`` (from ``prepare``), or
    prepare it here first. Run on the model's thread."""
    with _source_errors(source, name):
        if source.kind == "hf":
            repo, _, revision = source.location.partition("@")
            model.load_adapter(repo, source="hf", revision=revision or None, load_as=name, overwrite_ok=True)
            return
        model.add_prepared_adapter(
            prepared if prepared is not None else prepare(source, fetched, model, name)
        )
