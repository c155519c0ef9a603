"""Image and audio rows: ``{"image": "cats/1.png", "label": "cat"}`` or ``{"audio": "yes/1.wav", "label": "yes"}``.

A task whose rows have an ``image`` (or ``audio``) column and no text column is an image (audio) task. A row's
path is taken relative to the folder of the file the row is in (absolute paths are kept). When the rows are read
every file is checked: it exists, and it opens as an image (Pillow) or as 16-bit PCM mono WAV (the standard
library's :mod:`wave`); a bad row raises :class:`ConfigError` naming the data file and line. Decoding
(:func:`read_image`, :func:`read_audio`) happens when a batch is built and names the row too.

Torch-free: Pillow and numpy only.
"""

from __future__ import annotations

import wave
from collections.abc import Iterable
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
    media = Media(kind, str(path.resolve()), where)
    if kind == "image":
        _check_image(media)
    else:
        _check_audio(media)
    return media


def _check_image(media: Media) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(media.path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ConfigError(
            f"{media.where}: {media.path} is not a readable image ({error}); replace the file or remove the row"
        ) from None


def read_image(media: Media) -> Any:
    """The image of ``media`` as an RGB ``PIL.Image.Image`` (grey, palette and alpha images converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(media.path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ConfigError(
            f"{media.where}: cannot decode the image {media.path} ({error}); replace the file or remove the row"
        ) from None


def _wav_header(media: Media) -> tuple[int, int, int, int]:
    """``(channels, sample width in bytes, frame rate, frames)`` of a WAV file, or a ConfigError naming the row."""
    try:
        with wave.open(media.path, "rb") as reader:
            return reader.getnchannels(), reader.getsampwidth(), reader.getframerate(), reader.getnframes()
    except (wave.Error, EOFError, OSError) as error:
        raise ConfigError(
            f"{media.where}: {media.path} is not a readable WAV file ({error}); audio rows need 16-bit PCM mono "
            "WAV (convert with e.g. `ffmpeg -i in.mp3 -ac 1 -ar 16000 -sample_fmt s16 out.wav`)"
        ) from None


def _check_audio(media: Media) -> None:
    channels, width, _, frames = _wav_header(media)
    if channels != 1 or width != AUDIO_SAMPLE_WIDTH:
        raise ConfigError(
            f"{media.where}: {media.path} has {channels} channel(s) of {8 * width}-bit samples; audio rows need "
            "16-bit PCM mono WAV (convert with e.g. `ffmpeg -i in.wav -ac 1 -sample_fmt s16 out.wav`)"
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
    sampling rate in Hz. The file is 16-bit PCM mono (checked when the row was read)."""
    import numpy as np

    _check_audio(media)
    try:
        with wave.open(media.path, "rb") as reader:
            rate = reader.getframerate()
            data = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError, OSError) as error:
        raise ConfigError(f"{media.where}: cannot read {media.path} ({error})") from None
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0  # (frames,)
    return samples, rate
