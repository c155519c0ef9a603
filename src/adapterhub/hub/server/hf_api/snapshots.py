"""Repos and revisions of the Hub file API: repo ``owner/name`` is adapter ``@owner/name``; a revision is ``main``
(the newest version), ``v<N>`` (version N) or a version's commit id; a snapshot is the files of one version.

A version's commit id is ``sha1("adapterhub:{owner}/{name}:v{N}:{archive sha256}")`` (40 hex digits, like a git
commit): stable, derived from immutable data, so nothing new is stored. A version's files are its archive's files;
they are unpacked once per archive into a local cache folder (``$ADAPTERHUB_HUB_FILE_CACHE``, default
``<tmp>/adapterhub-hub-files``) via a temporary folder and an atomic rename, so several server processes may share it.
Each file's id (``oid``, also its ETag) is its git blob sha1, as on the Hub.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from adapterhub.hub.archive import ArchiveLimits, extract_archive
from adapterhub.hub.server.hf_api.errors import REPO_NOT_FOUND, REVISION_NOT_FOUND, HfApiError
from adapterhub.hub.server.models import Adapter, AdapterVersion, Owner
from adapterhub.hub.server.storage import Storage

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
MAIN = "main"


def commit_id(owner: str, name: str, number: int, sha256: str) -> str:
    return hashlib.sha1(f"adapterhub:{owner}/{name}:v{number}:{sha256}".encode()).hexdigest()


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    oid: str  # git blob sha1
    sha256: str


@dataclass(frozen=True)
class Snapshot:
    """One version of a repo, detached from the database session."""

    owner: str
    name: str
    number: int
    latest: int
    commit: str
    sha256: str
    storage_key: str
    created_at: dt.datetime
    repo_created_at: dt.datetime
    adapter_id: int
    version_id: int
    downloads: int
    method: str
    model_type: str
    model_name: str
    hidden_size: int
    layout: str

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.name}"


def find_adapter(s: Session, owner: str, name: str) -> Adapter | None:
    row = s.scalar(
        sa.select(Adapter)
        .join(Owner, Owner.id == Adapter.owner_id)
        .where(Owner.name_key == owner.lower(), Adapter.name == name)
    )
    return row


def repo_not_found(owner: str, name: str) -> HfApiError:
    return HfApiError(
        f"Repository {owner}/{name} not found on this hub (no adapter @{owner}/{name} has been published).",
        code=REPO_NOT_FOUND,
        status=404,
    )


def resolve(s: Session, owner: str, name: str, revision: str) -> Snapshot:
    """The snapshot of ``owner/name`` at ``revision``; RepoNotFound / RevisionNotFound (404) otherwise."""
    adapter = find_adapter(s, owner, name)
    if adapter is None or adapter.latest_version < 1:
        raise repo_not_found(owner, name)
    versions = s.scalars(
        sa.select(AdapterVersion)
        .where(AdapterVersion.adapter_id == adapter.id)
        .order_by(AdapterVersion.number)
    ).all()
    chosen: AdapterVersion | None = None
    if revision == MAIN:
        chosen = versions[-1] if versions else None
    elif (match := VERSION_RE.match(revision)) is not None:
        chosen = next((v for v in versions if v.number == int(match.group(1))), None)
    elif COMMIT_RE.match(revision):
        chosen = next(
            (
                v
                for v in versions
                if commit_id(adapter.owner.name, adapter.name, v.number, v.sha256) == revision
            ),
            None,
        )
    if chosen is None:
        raise HfApiError(
            f"Revision {revision!r} not found in {adapter.owner.name}/{adapter.name}; revisions are 'main', "
            f"{', '.join(f'v{v.number}' for v in versions)} or a version's commit id.",
            code=REVISION_NOT_FOUND,
            status=404,
        )
    return Snapshot(
        owner=adapter.owner.name,
        name=adapter.name,
        number=chosen.number,
        latest=versions[-1].number,
        commit=commit_id(adapter.owner.name, adapter.name, chosen.number, chosen.sha256),
        sha256=chosen.sha256,
        storage_key=chosen.storage_key,
        created_at=chosen.created_at,
        repo_created_at=adapter.created_at,
        adapter_id=adapter.id,
        version_id=chosen.id,
        downloads=adapter.downloads,
        method=adapter.method,
        model_type=adapter.model_type,
        model_name=adapter.model_name,
        hidden_size=adapter.hidden_size,
        layout=chosen.layout,
    )


def head(s: Session, owner: str, name: str) -> Snapshot | None:
    """The newest snapshot, or None when nothing is published under ``owner/name`` yet."""
    try:
        return resolve(s, owner, name, MAIN)
    except HfApiError as error:
        if error.code == REPO_NOT_FOUND:
            return None
        raise


def cache_root() -> Path:
    return Path(
        os.environ.get("ADAPTERHUB_HUB_FILE_CACHE") or Path(tempfile.gettempdir()) / "adapterhub-hub-files"
    )


def snapshot_dir(storage: Storage, snapshot: Snapshot) -> Path:
    """The folder holding the snapshot's files (unpacked from its archive on first use)."""
    root = cache_root()
    final = root / snapshot.sha256
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{snapshot.sha256[:12]}-{uuid.uuid4().hex[:8]}-", dir=root))
    try:
        archive = work / "archive.tar.gz"
        digest = hashlib.sha256()
        with open(archive, "wb") as out:
            for chunk in storage.iter_bytes(snapshot.storage_key):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != snapshot.sha256:
            raise HfApiError(
                f"The stored archive of {snapshot.repo_id} v{snapshot.number} does not match its sha256.",
                code="storage_error",
                status=503,
            )
        files = work / "files"
        extract_archive(
            archive, files, ArchiveLimits(max_files=10_000, max_file_bytes=1 << 40, max_total_bytes=1 << 40)
        )
        try:
            os.rename(files, final)
        except OSError:  # another process unpacked it first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


@functools.lru_cache(maxsize=4096)
def _entry(path: str, size: int, mtime_ns: int) -> FileEntry:
    sha1 = hashlib.sha1(f"blob {size}\0".encode())
    sha256 = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha1.update(chunk)
            sha256.update(chunk)
    return FileEntry(Path(path).name, size, sha1.hexdigest(), sha256.hexdigest())


def file_entries(directory: Path) -> dict[str, FileEntry]:
    """Name -> size, git blob sha1 and sha256 of every file in ``directory`` (sorted by name)."""
    out = {}
    for p in sorted(directory.iterdir()):
        if p.is_file():
            st = p.stat()
            out[p.name] = _entry(str(p), st.st_size, st.st_mtime_ns)
    return out


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def iso(moment: dt.datetime) -> str:
    """The Hub's date format (``2024-01-31T12:00:00.000Z``)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (
        moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{moment.microsecond // 1000:03d}Z"
    )
