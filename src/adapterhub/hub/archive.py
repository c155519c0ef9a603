"""Packing and safe unpacking of adapter archives (tar.gz or zip of an adapter directory).

Unpacking never trusts the archive: only regular files are accepted (no links, devices, FIFOs), names must be plain
relative paths without ``..``, drive letters or backslashes, and the number of files, each file's size and the
total uncompressed size are capped while the bytes are actually copied (headers can lie). An archive may hold the
files at its top level or inside one folder; adapter directories are flat, so deeper paths are refused.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from adapterhub.hub.errors import UnsafeArchiveError

FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 32
    max_file_bytes: int = 512 * 1024 * 1024
    max_total_bytes: int = 1024 * 1024 * 1024
    max_ratio: float = 200.0  # uncompressed / compressed, for zip members larger than 1 MiB


def _unsafe(why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"Refused archive: {why}.", code="unsafe_archive", status=422)


def _member_path(name: str) -> PurePosixPath:
    if not name or "\x00" in name:
        raise _unsafe("an entry has an empty name")
    if "\\" in name:
        raise _unsafe(f"entry {name!r} contains a backslash")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(f"entry {name!r} is an absolute path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _unsafe(f"entry {name!r} points outside the archive ('..')")
    if not parts:
        raise _unsafe(f"entry {name!r} has no file name")
    return PurePosixPath(*parts)


def _plan(entries: list[tuple[PurePosixPath, bool]]) -> dict[PurePosixPath, str]:
    """Map each file entry to its flat name, stripping one common top-level folder."""
    files = [p for p, is_dir in entries if not is_dir]
    if not files:
        raise _unsafe("it contains no files")
    prefix: str | None = None
    if all(len(p.parts) == 2 for p in files) and len({p.parts[0] for p in files}) == 1:
        prefix = files[0].parts[0]
    out: dict[PurePosixPath, str] = {}
    for p in files:
        rel = p.parts[1:] if prefix is not None else p.parts
        if len(rel) != 1:
            raise _unsafe(f"entry {str(p)!r} is in a subfolder; an adapter archive holds a flat directory")
        flat = rel[0]
        if not FILE_NAME_RE.match(flat):
            raise _unsafe(f"entry {str(p)!r} has a file name that is not allowed")
        if flat in out.values():
            raise _unsafe(f"file {flat!r} appears twice")
        out[p] = flat
    for p, is_dir in entries:
        if is_dir and not (prefix is not None and p.parts == (prefix,)):
            raise _unsafe(f"entry {str(p)!r} is a subfolder; an adapter archive holds a flat directory")
    return out


def _copy_capped(src: IO[bytes], dst: IO[bytes], name: str, budget: list[int], limits: ArchiveLimits) -> None:
    written = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return
        written += len(chunk)
        budget[0] -= len(chunk)
        if written > limits.max_file_bytes:
            raise _unsafe(f"file {name!r} is larger than {limits.max_file_bytes} bytes")
        if budget[0] < 0:
            raise _unsafe(f"it unpacks to more than {limits.max_total_bytes} bytes")
        dst.write(chunk)


def sniff_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:4] == b"PK\x05\x06":
        raise _unsafe("the zip archive is empty")
    raise _unsafe("it is neither a tar.gz nor a zip file")


def extract_archive(
    archive: str | os.PathLike, dest: str | os.PathLike, limits: ArchiveLimits | None = None
) -> list[str]:
    """Unpack ``archive`` into the (new or empty) directory ``dest``; return the file names written."""
    limits = limits or ArchiveLimits()
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    kind = sniff_format(archive)
    try:
        if kind == "zip":
            return _extract_zip(archive, dest, limits)
        return _extract_tar(archive, dest, limits)
    except UnsafeArchiveError:
        raise
    except (
        tarfile.TarError,
        zipfile.BadZipFile,
        EOFError,
        gzip.BadGzipFile,
        OSError,
        ValueError,
        NotImplementedError,
        RuntimeError,
    ) as error:
        raise UnsafeArchiveError(
            f"Refused archive: it is corrupted or truncated ({error}).", code="unsafe_archive", status=422
        ) from error


def _extract_tar(archive: Path, dest: Path, limits: ArchiveLimits) -> list[str]:
    budget = [limits.max_total_bytes]
    with tarfile.open(archive, mode="r:gz") as tf:
        members: list[tarfile.TarInfo] = []
        entries: list[tuple[PurePosixPath, bool]] = []
        for member in _iter_tar(tf, limits):
            path = _member_path(member.name)
            if member.isdir():
                entries.append((path, True))
                continue
            if not member.isreg():
                kind = "link" if (member.issym() or member.islnk()) else "special file"
                raise _unsafe(f"entry {member.name!r} is a {kind}; only regular files are allowed")
            if member.size > limits.max_file_bytes:
                raise _unsafe(f"file {member.name!r} is larger than {limits.max_file_bytes} bytes")
            members.append(member)
            entries.append((path, False))
        plan = _plan(entries)
        if sum(m.size for m in members) > limits.max_total_bytes:
            raise _unsafe(f"it unpacks to more than {limits.max_total_bytes} bytes")
        for member in members:
            flat = plan[_member_path(member.name)]
            src = tf.extractfile(member)
            if src is None:
                raise _unsafe(f"entry {member.name!r} cannot be read")
            with src, open(dest / flat, "xb") as dst:
                _copy_capped(src, dst, member.name, budget, limits)
        return sorted(plan.values())


def _iter_tar(tf: tarfile.TarFile, limits: ArchiveLimits) -> Iterator[tarfile.TarInfo]:
    count = 0
    while True:
        member = tf.next()
        if member is None:
            return
        count += 1
        if count > limits.max_files + 1:  # +1 for an optional top-level folder entry
            raise _unsafe(f"it has more than {limits.max_files} entries")
        yield member


def _extract_zip(archive: Path, dest: Path, limits: ArchiveLimits) -> list[str]:
    budget = [limits.max_total_bytes]
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files + 1:
            raise _unsafe(f"it has more than {limits.max_files} entries")
        entries: list[tuple[PurePosixPath, bool]] = []
        files: list[zipfile.ZipInfo] = []
        total = 0
        for info in infos:
            path = _member_path(info.filename)
            mode = info.external_attr >> 16
            if mode and stat.S_ISLNK(mode):
                raise _unsafe(f"entry {info.filename!r} is a link; only regular files are allowed")
            if info.is_dir():
                entries.append((path, True))
                continue
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                raise _unsafe(f"entry {info.filename!r} is a special file; only regular files are allowed")
            if info.flag_bits & 0x1:
                raise _unsafe(f"entry {info.filename!r} is encrypted")
            if info.file_size > limits.max_file_bytes:
                raise _unsafe(f"file {info.filename!r} is larger than {limits.max_file_bytes} bytes")
            if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise _unsafe(f"file {info.filename!r} has a compression ratio typical of a zip bomb")
            total += info.file_size
            files.append(info)
            entries.append((path, False))
        if total > limits.max_total_bytes:
            raise _unsafe(f"it unpacks to more than {limits.max_total_bytes} bytes")
        plan = _plan(entries)
        for info in files:
            flat = plan[_member_path(info.filename)]
            with zf.open(info) as src, open(dest / flat, "xb") as dst:
                _copy_capped(src, dst, info.filename, budget, limits)
        return sorted(plan.values())


def pack_directory(directory: str | os.PathLike, out: str | os.PathLike | BinaryIO) -> None:
    """Write the flat ``directory`` as a reproducible tar.gz: sorted names, no owners, mtime 0, mode 0644.

    The same files always give the same bytes, so the archive's sha256 identifies the adapter's content.
    """
    directory = Path(directory)
    names = sorted(p.name for p in directory.iterdir())
    for name in names:
        p = directory / name
        if p.is_symlink() or not p.is_file():
            raise UnsafeArchiveError(
                f"{p} is not a regular file; an adapter directory holds only files.", code="unsafe_archive"
            )
        if not FILE_NAME_RE.match(name):
            raise UnsafeArchiveError(
                f"{p}: file name not allowed in an adapter directory.", code="unsafe_archive"
            )
    own = not hasattr(out, "write")
    fileobj: BinaryIO = open(out, "wb") if own else out  # type: ignore[arg-type, assignment]  # noqa: SIM115
    try:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=fileobj, mtime=0, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
        ):  # type: ignore[call-overload]
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = (directory / name).stat().st_size
                info.mode = 0o644
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(directory / name, "rb") as f:
                    tf.addfile(info, f)
    finally:
        if own:
            fileobj.close()


def pack_directory_bytes(directory: str | os.PathLike) -> bytes:
    buf = io.BytesIO()
    pack_directory(directory, buf)
    return buf.getvalue()
