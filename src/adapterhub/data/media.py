"""Image and audio rows: ``{"image": "cats/1.png", "label": "cat"}`` or ``{"audio": "yes/1.wav", "label": "yes"}``.

A task whose rows have an ``image`` (or ``audio``) column and no text column is an image (audio) task. A row's
path is taken relative to the folder of the file the row is in (absolute paths are kept). When the rows are read
every file is checked: it exists, and it opens as an image (Pillow) or as audio (:mod:`adapterhub.data.audio`: WAV
of PCM 8/16/24/32-bit or float samples read with the standard library and numpy, every other format libsndfile
reads, FLAC, Ogg, MP3, ..., through ``soundfile``; only the header is read); a bad row raises :class:`ConfigError`
naming the data file and line. Decoding (:func:`read_image`, :func:`read_audio`: mono float32, several channels
mixed down by their mean) happens when a batch is built and names the row too.

A HuggingFace ``Image`` / ``Audio`` cell (``{"bytes": b"...", "path": "cats/1.png"}``, as ``datasets`` stores it
undecoded) gives a :class:`Media` holding those bytes (``Media.data``), checked and decoded the same way; a cell
with no bytes names a local file (``path``, as the dataset stored it). Audio is never decoded with torchaudio or
torchcodec. A clip at another sampling rate than the model's is resampled when its batch is built
(:mod:`adapterhub.data.resample`).

Torch-free: Pillow and numpy (and soundfile for audio other than WAV).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adapterhub.data.audio import audio_length as audio_length
from adapterhub.data.audio import audio_rate as audio_rate
from adapterhub.data.audio import check_audio
from adapterhub.data.audio import read_audio as read_audio
from adapterhub.data.tables import Row, Table
from adapterhub.data.task import MEDIA_KINDS, Media, MediaKind
from adapterhub.errors import ConfigError


def detect_media(header: Iterable[str], text_column: str) -> MediaKind | None:
    """``"image"`` or ``"audio"`` when ``header`` has that column and not ``text_column``, else ``None`` (text
    rows). A header with both an ``image`` and an ``audio`` column (and no text) is refused."""
    columns = set(header)
    if text_column in columns:
        return None
    found = [kind for kind in MEDIA_KINDS if kind in columns]
    if len(found) > 1:
        raise ConfigError(
            f"the rows have both an 'image' and an 'audio' column (and no {text_column!r} column); a task reads "
            "one kind of input: keep one of the columns"
        )
    return found[0] if found else None  # type: ignore[return-value]


def media_of(table: Table, row: Row, kind: MediaKind) -> Media:
    """The checked :class:`Media` of ``row``'s ``kind`` column (path relative to the table's folder)."""
    where = table.where(row)
    value = row.values.get(kind)
    if isinstance(value, Mapping):
        media = _stored_media(kind, value, where)
    else:
        media = _file_media(table, kind, value, where)
    if kind == "image":
        _check_image(media)
    else:
        check_audio(media)
    return media


def _file_media(table: Table, kind: MediaKind, value: Any, where: str) -> Media:
    """The :class:`Media` of a path cell (relative to the table's folder), checked to exist."""
    if not isinstance(value, str) or not value.strip():
        got = "nothing" if value is None or value == "" else f"{type(value).__name__} {value!r}"[:80]
        raise ConfigError(
            f"{where}: no {kind} path in column {kind!r} (got {got}); every row of an {kind} task needs "
            f'"{kind}": "<file path, relative to the data file\'s folder>"'
        )
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        path = Path(table.origin).parent / path
    if not path.is_file():
        raise ConfigError(
            f"{where}: {kind} file {value.strip()!r} not found (looked for {path}); fix the path (relative paths "
            "start at the data file's folder) or remove the row"
        )
    return Media(kind, str(path.resolve()), where)


def _stored_media(kind: MediaKind, cell: Mapping[str, Any], where: str) -> Media:
    """The :class:`Media` of a HuggingFace ``Image`` / ``Audio`` cell ``{"bytes": ..., "path": ...}``."""
    data, stored = cell.get("bytes"), cell.get("path")
    name = stored if isinstance(stored, str) and stored else f"the {kind} of {where}"
    if isinstance(data, bytes | bytearray) and data:
        return Media(kind, name, where, data=bytes(data))
    if isinstance(stored, str) and stored:
        path = Path(stored).expanduser()
        if path.is_file():
            return Media(kind, str(path.resolve()), where)
        raise ConfigError(
            f"{where}: the {kind} cell holds no bytes, only the path {stored!r}, and there is no such file here; "
            "save the dataset with its files embedded (e.g. Dataset.to_parquet or push_to_hub embed them) or run "
            "where the files are"
        )
    raise ConfigError(f"{where}: the {kind} cell is empty (no bytes and no path); remove the row")


def _source(media: Media) -> Any:
    """What to open: the row's own bytes as a file object, else its path."""
    return io.BytesIO(media.data) if media.data is not None else media.path


def _check_image(media: Media) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_source(media)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ConfigError(
            f"{media.where}: {media.path} is not a readable image ({error}); replace the file or remove the row"
        ) from None


def read_image(media: Media) -> Any:
    """The image of ``media`` as an RGB ``PIL.Image.Image`` (grey, palette and alpha images converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_source(media)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ConfigError(
            f"{media.where}: cannot decode the image {media.path} ({error}); replace the file or remove the row"
        ) from None
