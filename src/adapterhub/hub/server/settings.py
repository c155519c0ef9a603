"""Server settings: where the database and the blobs live, and the upload limits."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from adapterhub.hub.archive import ArchiveLimits
from adapterhub.hub.errors import HubValidationError

DEFAULT_PORT = 8765
WEIGHTS_CHECKS = ("full", "header")


def adapterhub_home() -> Path:
    """``$ADAPTERHUB_HOME``, default ``~/.local/share/adapterhub``."""
    env = os.environ.get("ADAPTERHUB_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "adapterhub"


def default_hub_dir() -> Path:
    return adapterhub_home() / "hub"


@dataclass
class HubSettings:
    db_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    max_upload_bytes: int = 64 * 1024 * 1024
    archive_limits: ArchiveLimits = field(
        default_factory=lambda: ArchiveLimits(
            max_files=32, max_file_bytes=256 * 1024 * 1024, max_total_bytes=256 * 1024 * 1024
        )
    )
    public_url: str | None = None
    # how uploads are checked (docs/hub.md): "full" builds the method's modules (needs torch) and compares every
    # weight's name and shape; "header" reads the files' JSON and safetensors headers only (server without torch).
    # Default: env ADAPTERHUB_HUB_WEIGHTS_CHECK, else "full" where torch is installed and "header" where not.
    weights_check: str = ""
    # test hook: seconds to sleep after the blob is stored and before the version row is committed
    pause_before_commit: float = 0.0

    def __post_init__(self) -> None:
        hub_dir = default_hub_dir()
        if not self.db_url:
            self.db_url = os.environ.get("ADAPTERHUB_HUB_DB") or f"sqlite:///{hub_dir / 'hub.sqlite3'}"
        if not self.storage_url:
            self.storage_url = os.environ.get("ADAPTERHUB_HUB_STORAGE") or str(hub_dir / "storage")
        if self.s3_endpoint_url is None:
            self.s3_endpoint_url = (
                os.environ.get("ADAPTERHUB_S3_ENDPOINT_URL")
                or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
                or None
            )
        if os.environ.get("ADAPTERHUB_HUB_MAX_UPLOAD_BYTES"):
            self.max_upload_bytes = int(os.environ["ADAPTERHUB_HUB_MAX_UPLOAD_BYTES"])
        if not self.weights_check:
            self.weights_check = os.environ.get("ADAPTERHUB_HUB_WEIGHTS_CHECK") or (
                "full" if importlib.util.find_spec("torch") is not None else "header"
            )
        if self.weights_check not in WEIGHTS_CHECKS:
            raise HubValidationError(
                f"weights check {self.weights_check!r} is not one of {', '.join(WEIGHTS_CHECKS)} "
                "(--weights-check / ADAPTERHUB_HUB_WEIGHTS_CHECK)."
            )
        if self.weights_check == "full" and importlib.util.find_spec("torch") is None:
            raise HubValidationError(
                "The full weights check needs torch, which is not installed here: install the library with its "
                "model dependencies (pip install adapterhub[hub]) or use --weights-check header."
            )
        if os.environ.get("ADAPTERHUB_HUB_TEST_PAUSE_BEFORE_COMMIT"):
            self.pause_before_commit = float(os.environ["ADAPTERHUB_HUB_TEST_PAUSE_BEFORE_COMMIT"])
