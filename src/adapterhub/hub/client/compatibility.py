"""Checking that a downloaded adapter was saved for the local model (model type and hidden size) before loading.

The check reads the adapter with :func:`adapterhub.io.manifest.inspect_adapter_dir`, which needs the library's core
dependencies (torch among them). It is never skipped: when that import fails, :class:`HubDependencyError` names the
missing module and what to install.
"""

from __future__ import annotations

from pathlib import Path

from adapterhub.errors import IncompatibleModelError
from adapterhub.hub.errors import HubDependencyError


def check_model(path: Path, model_type: str, hidden_size: int, what: str) -> None:
    """Raise unless the adapter at ``path`` (``what`` names it) was saved for ``model_type`` / ``hidden_size``.

    Raises :class:`adapterhub.errors.IncompatibleModelError` for another model, the errors of
    ``inspect_adapter_dir`` for a broken adapter, and :class:`HubDependencyError` when the check cannot run.
    """
    try:
        from adapterhub.io.manifest import inspect_adapter_dir
    except ImportError as error:
        raise _cannot_check(error, path, model_type, hidden_size, what) from error
    manifest = inspect_adapter_dir(path, model_type=model_type)
    if manifest.model_type != model_type or manifest.hidden_size != hidden_size:
        raise IncompatibleModelError(
            f"{what} was saved for {manifest.model_type} with hidden size "
            f"{manifest.hidden_size}, not for your {model_type} with {hidden_size}."
        )


def _cannot_check(
    error: ImportError, path: Path, model_type: str, hidden_size: int, what: str
) -> HubDependencyError:
    missing = error.name or ""
    if missing and not missing.startswith("adapterhub"):
        package = missing.split(".")[0]
        todo = (
            f"install {package!r} (pip install {package}), or reinstall adapterhub with its dependencies "
            "(pip install --force-reinstall adapterhub)"
        )
    else:
        todo = (
            "reinstall adapterhub (pip install --force-reinstall adapterhub); its installation is incomplete"
        )
    return HubDependencyError(
        f"Cannot check that {what} fits your {model_type} model (hidden size {hidden_size}): the check needs "
        f"adapterhub.io.manifest, and importing it failed ({error}). The adapter was downloaded to {path} but "
        f"not loaded. To fix this, {todo}.",
        code="missing_dependency",
        details={"missing_module": missing},
    )
