"""Adapters on the Hugging Face Hub (or any server speaking its file API, such as our hub), through ``huggingface_hub``.

:func:`download_adapter_repo` fetches an adapter repo into ``huggingface_hub``'s cache and returns its folder;
:func:`push_adapter_dir_to_hf` uploads a saved adapter folder with a model card (:mod:`adapterhub.hub.hf_card`).
The Hub's variables are read at each call, not at import: ``HF_ENDPOINT`` (the server), ``HF_TOKEN`` (else the token
``huggingface_hub`` stored at login), ``HF_HOME`` / ``HF_HUB_CACHE`` (the cache) and ``HF_HUB_OFFLINE`` (only the
cache is used). Any of the three layouts may be in the repo (ours, the ``adapters`` library's, peft's); the caller
reads it with :func:`adapterhub.io.loading.read_any_adapter_dir`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterFileError
from adapterhub.hub.errors import (
    HubAuthError,
    HubConnectionError,
    HubDependencyError,
    HubNotFoundError,
    HubOfflineError,
    HubValidationError,
)

CONFIG_FILE = "adapter_config.json"
# What the three layouts consist of (configs, weights, heads, the card); a full model's other files are not fetched.
ADAPTER_FILE_PATTERNS = ("*.json", "*.safetensors", "*.bin", "README.md")
_FULL_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
_TRUE = ("1", "true", "yes", "on")


def _hf() -> Any:
    try:
        import huggingface_hub
    except ImportError as error:
        raise HubDependencyError(
            f"The Hugging Face Hub needs huggingface_hub ({error}); install adapterhub[hf]."
        ) from None
    return huggingface_hub


def hub_settings(
    *,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> dict[str, Any]:
    """The endpoint, token, cache folder and offline flag for a call: the arguments, else the ``HF_*`` variables
    as they are now, else ``huggingface_hub``'s defaults (``None``)."""
    if cache_dir is None:
        if os.environ.get("HF_HUB_CACHE"):
            cache_dir = os.environ["HF_HUB_CACHE"]
        elif os.environ.get("HF_HOME"):
            cache_dir = Path(os.environ["HF_HOME"]) / "hub"
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    return {
        "endpoint": (endpoint or os.environ.get("HF_ENDPOINT") or None),
        "token": token or os.environ.get("HF_TOKEN") or None,
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "offline": bool(offline),
    }


def _translate(error: Exception, repo_id: str, revision: str | None, where: str) -> Exception:
    """``huggingface_hub``'s errors as ours (the original is chained)."""
    hf = _hf()
    errors = hf.errors
    at = f"{repo_id}@{revision}" if revision else repo_id
    if isinstance(error, errors.RevisionNotFoundError):
        return HubNotFoundError(f"{where} has no revision {revision!r} for {repo_id}: {_first_line(error)}")
    if isinstance(error, errors.RepositoryNotFoundError):
        return HubNotFoundError(
            f"{where} has no repo {repo_id!r} (or it is private and the token does not give access). "
            "Check the name, HF_ENDPOINT and HF_TOKEN."
        )
    if isinstance(error, errors.OfflineModeIsEnabled | errors.LocalEntryNotFoundError):
        return HubOfflineError(
            f"{at} is not in the Hugging Face cache ({hub_settings()['cache_dir'] or 'HF_HOME/hub'}) and the "
            f"Hub cannot be used (offline, or unreachable: {_first_line(error)}). Download it once online "
            f"(adapterhub pull --hf {repo_id}), then it loads offline."
        )
    if isinstance(error, errors.HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return HubAuthError(f"{where} refused the token for {at}: {_first_line(error)}", status=status)
        return HubValidationError(f"{where} refused the request for {at}: {error}", status=status)
    if isinstance(error, ValueError) and "README" in str(
        error
    ):  # huggingface_hub's README check (validate-yaml)
        return HubValidationError(f"{where} refused the model card of {at}: {error}")
    if isinstance(error, OSError):
        return HubConnectionError(f"{where} could not be reached for {at}: {error}")
    return error


def _first_line(error: Exception) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)


def describe_repo(repo_id: str, files: list[str]) -> str:
    """What a repo without ``adapter_config.json`` holds, in words."""
    if not files:
        return f"{repo_id} is empty."
    shown = ", ".join(files[:15]) + (f", ... ({len(files)} files)" if len(files) > 15 else "")
    kind = ""
    if any(f in files for f in _FULL_MODEL_FILES):
        kind = " It looks like a full model (config.json / model weights), not an adapter."
    elif any(f.endswith("/" + CONFIG_FILE) for f in files):
        kind = " Adapters are in sub-folders; download one folder and pass its path to load_adapter."
    return f"{repo_id} holds no adapter (no {CONFIG_FILE} at its top); it holds: {shown}.{kind}"


def download_adapter_repo(
    repo_id: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> Path:
    """Download the adapter in ``repo_id`` at ``revision`` (default: the default branch) and return its folder in the
    cache (``.../snapshots/<commit>``). A repo that holds no adapter raises AdapterFileError saying what it holds."""
    hf = _hf()
    opts = hub_settings(endpoint=endpoint, token=token, cache_dir=cache_dir, offline=offline)
    where = f"The Hub at {opts['endpoint'] or hf.constants.ENDPOINT}"
    common = {"token": opts["token"], "cache_dir": opts["cache_dir"], "endpoint": opts["endpoint"]}
    try:
        config = hf.hf_hub_download(
            repo_id, CONFIG_FILE, revision=revision, local_files_only=opts["offline"], **common
        )
    except hf.errors.RemoteEntryNotFoundError:
        files = hf.HfApi(endpoint=opts["endpoint"], token=opts["token"]).list_repo_files(
            repo_id, revision=revision
        )
        raise AdapterFileError(describe_repo(repo_id, sorted(files))) from None
    except Exception as error:
        translated = _translate(error, repo_id, revision, where)
        if translated is error:
            raise
        raise translated from error
    commit = Path(config).parent.name  # snapshots/<commit>/adapter_config.json: pin what was just resolved
    try:
        folder = hf.snapshot_download(
            repo_id,
            revision=commit,
            allow_patterns=list(ADAPTER_FILE_PATTERNS),
            local_files_only=opts["offline"],
            **common,
        )
    except Exception as error:
        translated = _translate(error, repo_id, commit, where)
        if translated is error:
            raise
        raise translated from error
    return Path(folder)


def push_adapter_dir_to_hf(
    directory: str | os.PathLike[str],
    repo_id: str,
    *,
    readme: str,
    endpoint: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
) -> dict[str, str]:
    """Upload the files of ``directory`` with ``readme`` as ``README.md`` (from a temporary copy; ``directory`` is
    not changed) to ``repo_id``, created when missing. Returns ``{"repo_id", "commit", "url"}``."""
    hf = _hf()
    opts = hub_settings(endpoint=endpoint, token=token)
    where = f"The Hub at {opts['endpoint'] or hf.constants.ENDPOINT}"
    source = Path(directory)
    if not source.is_dir():
        raise AdapterFileError(f"No adapter directory at {source}.")
    staging = Path(tempfile.mkdtemp(prefix="adapterhub-hf-upload-"))
    directory = staging / source.name
    shutil.copytree(source, directory)
    (directory / "README.md").write_text(readme, encoding="utf-8")
    api = hf.HfApi(endpoint=opts["endpoint"], token=opts["token"])
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(directory),
            commit_message=commit_message or f"Upload adapter {directory.name} with adapterhub",
        )
    except Exception as error:
        translated = _translate(error, repo_id, None, where)
        if translated is error:
            raise
        raise translated from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"repo_id": repo_id, "commit": str(info.oid), "url": str(info.commit_url)}
