"""Image and audio rows: ``{"image": "cats/1.png", "label": "cat"}`` or ``{"audio": "yes/1.wav", "label": "yes"}``.

A task whose rows have an ``image`` (or ``audio``) column and no text column is an image (audio) task. A row's
path is taken relative to the folder of the file the row is in (absolute paths are kept). When the rows are read
every file is checked: it exists, and it opens as an image (Pillow) or as 16-bit PCM WAV (the standard
library's :mod:`wave`; mono, or several channels mixed down to mono by their mean when read); a bad row raises
:class:`ConfigError` naming the data file and line. Decoding
(:func:`read_image`, :func:`read_audio`) happens when a batch is built and names the row too.

A HuggingFace ``Image`` / ``Audio`` cell (``{"bytes": b"...", "path": "cats/1.png"}``, as ``datasets`` stores it
undecoded) gives a :class:`Media` holding those bytes (``Media.data``), checked and decoded the same way; a cell
with no bytes names a local file (``path``, as the dataset stored it). Audio is decoded with :mod:`wave` only (no
torchaudio, no torchcodec), so an ``Audio`` column must hold 16-bit PCM WAV: FLAC, MP3 and Ogg clips are
refused, naming their format. A clip at another sampling rate than the model's is resampled when its batch is
built (:mod:`adapterhub.data.resample`).

Torch-free: Pillow and numpy only.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adapterhub.data.tables import Row, Table
from adapterhub.data.task import MEDIA_KINDS, Media, MediaKind
from adapterhub.errors import ConfigError

AUDIO_SAMPLE_WIDTH = 2  # bytes: 16-bit PCM


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
        _check_audio(media)
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


def _audio_format(media: Media) -> str:
    """A guess at a non-WAV clip's format from its first bytes, for the error message."""
    head = media.data[:4] if media.data is not None else b""
    for magic, name in ((b"fLaC", "FLAC"), (b"OggS", "Ogg"), (b"ID3", "MP3")):
        if head.startswith(magic):
            return f" (it is {name})"
    return " (it looks like MP3)" if head[:1] == b"\xff" else ""


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


def _wav_header(media: Media) -> tuple[int, int, int, int]:
    """``(channels, sample width in bytes, frame rate, frames)`` of a WAV file, or a ConfigError naming the row."""
    try:
        with wave.open(_source(media), "rb") as reader:
            return reader.getnchannels(), reader.getsampwidth(), reader.getframerate(), reader.getnframes()
    except (wave.Error, EOFError, OSError) as error:
        raise ConfigError(
            f"{media.where}: {media.path} is not a readable WAV file{_audio_format(media)} ({error}); audio rows "
            "need 16-bit PCM WAV, read with the standard library's wave module (convert with e.g. "
            "`ffmpeg -i in.mp3 -ac 1 -ar 16000 -sample_fmt s16 out.wav`)"
        ) from None


def _check_audio(media: Media) -> None:
    _, width, _, frames = _wav_header(media)
    if width != AUDIO_SAMPLE_WIDTH:
        raise ConfigError(
            f"{media.where}: {media.path} has {8 * width}-bit samples; audio rows need 16-bit PCM WAV (convert "
            "with e.g. `ffmpeg -i in.wav -ac 1 -sample_fmt s16 out.wav`)"
        )
    if frames == 0:
        raise ConfigError(f"{media.where}: {media.path} holds no samples; replace the file or remove the row")


def audio_rate(media: Media) -> int:
    """The sampling rate (Hz) of ``media``'s WAV file."""
    return _wav_header(media)[2]


def audio_length(media: Media) -> int:
    """The number of samples in ``media``'s WAV file (read from its header, nothing decoded)."""
    return _wav_header(media)[3]


def read_audio(media: Media) -> tuple[Any, int]:
    """``(samples, rate)``: the WAV file's samples as a float32 numpy array in [-1, 1) (shape (frames,)) and its
    sampling rate in Hz. The file is 16-bit PCM (checked when the row was read); a file with several channels
    (stereo) is mixed down to mono by the mean of its channels per frame, ``x[t] = (1/C) Σ_c x_c[t]``."""
    import numpy as np

    _check_audio(media)
    try:
        with wave.open(_source(media), "rb") as reader:
            rate = reader.getframerate()
            channels = reader.getnchannels()
            data = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError, OSError) as error:
        raise ConfigError(f"{media.where}: cannot read {media.path} ({error})") from None
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0  # (frames · C,), interleaved
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)  # (frames, C) -> (frames,)
    return samples, rate
