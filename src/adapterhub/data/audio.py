"""The audio file of an audio row, checked from its header and decoded to mono float32 samples.

**WAV** (RIFF/WAVE) is read with the standard library and numpy: the chunks are walked with :mod:`struct` (the
``fmt `` chunk gives the encoding, the ``data`` chunk the interleaved samples; the :mod:`wave` module of Python 3.11
refuses float and ``WAVE_FORMAT_EXTENSIBLE`` files, so it is not used). The encodings read here, and the rule that
scales each to floats in [-1, 1]:

=====================  =========================  ===========================
encoding               stored sample               value
=====================  =========================  ===========================
PCM 8-bit (unsigned)   ``u`` in [0, 255]           ``(u - 128) / 128``
PCM 16-bit             ``i`` in [-2^15, 2^15)      ``i / 2^15``
PCM 24-bit             ``i`` in [-2^23, 2^23)      ``i / 2^23``
PCM 32-bit             ``i`` in [-2^31, 2^31)      ``i / 2^31``
IEEE float 32/64-bit   ``f``                       ``f`` (kept as stored, not clipped; must be finite)
=====================  =========================  ===========================

The format tags read are ``WAVE_FORMAT_PCM`` (1), ``WAVE_FORMAT_IEEE_FLOAT`` (3) and ``WAVE_FORMAT_EXTENSIBLE``
(0xFFFE) with a PCM or float sub-format; an extensible file with fewer valid bits than its container (20 bits in
24) is scaled by the container, as its samples are left-justified. A trailing partial frame is ignored (as
:mod:`wave` and libsndfile do); a ``data`` chunk longer than the file is refused as truncated.

**Everything else** (FLAC, Ogg/Vorbis, Ogg/Opus, MP3, AIFF, WAV with another codec such as µ-law or ADPCM,
whatever the installed libsndfile reads) is read by ``soundfile`` (``pip install 'adapterhub[audio]'``), imported
only when such a file is met, as ``soundfile.read(dtype="float32")``: libsndfile scales integer PCM by the same
``1 / 2^(bits - 1)`` and decodes lossy formats to floats.

A file with several channels is mixed down to mono by the mean of its channels per frame,
``x[t] = (1/C) Σ_c x_c[t]``. The sampling rate is returned as stored; the batches resample
(:mod:`adapterhub.data.resample`). :func:`check_audio` (run when rows are read) reads only the header: the file
opens, has a known encoding and holds samples. Every error is a :class:`ConfigError` naming the row
(``file, line N``) and the audio file.

Torch-free: numpy, and soundfile when needed.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from adapterhub.data.task import Media
from adapterhub.errors import ConfigError

SOUNDFILE_INSTALL = "pip install 'adapterhub[audio]'"
CONVERT_HINT = "convert it with e.g. `ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`"
WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT: the 16-byte GUID is the format tag (2 bytes, little-endian), then this
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_WAV_BITS = {"pcm": (8, 16, 24, 32), "float": (32, 64)}


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header says: ``format`` in words (``"WAV PCM 16-bit"``, ``"FLAC PCM_16"``),
    ``channels``, ``rate`` (Hz) and ``frames`` (samples per channel)."""

    format: str
    channels: int
    rate: int
    frames: int


@dataclass(frozen=True)
class _WavLayout:
    """A WAV file this module decodes: ``encoding`` ``"pcm"`` / ``"float"``, container ``bits`` per sample, and
    where its samples are (``offset`` in bytes, ``frames`` whole frames)."""

    encoding: str
    bits: int
    channels: int
    rate: int
    frames: int
    offset: int

    @property
    def info(self) -> AudioInfo:
        name = "PCM" if self.encoding == "pcm" else "float"
        return AudioInfo(f"WAV {name} {self.bits}-bit", self.channels, self.rate, self.frames)


class _Unreadable(Exception):
    """A RIFF/WAVE file that is malformed (its message says how)."""


def _open(media: Media) -> BinaryIO:
    """The row's own bytes as a file object, else its file opened for reading."""
    return io.BytesIO(media.data) if media.data is not None else open(media.path, "rb")


def _sniff(head: bytes) -> str:
    """The container of a file from its first bytes, for messages (``""`` when unknown)."""
    for magic, name in (
        (b"fLaC", "FLAC"),
        (b"OggS", "Ogg"),
        (b"ID3", "MP3"),
        (b"FORM", "AIFF"),
        (b"RIFF", "WAV"),
    ):
        if head.startswith(magic):
            return name
    return "MP3" if head[:1] == b"\xff" and head[1:2] >= b"\xe0" else ""


def _wav_layout(stream: BinaryIO) -> _WavLayout | str | None:
    """The layout of a WAV file decoded here; a description of its format tag when it is WAV with another
    encoding (left to libsndfile); ``None`` when it is not RIFF/WAVE. Malformed chunks raise :class:`_Unreadable`."""
    head = stream.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    fmt: bytes | None = None
    while True:
        header = stream.read(8)
        if len(header) < 8:
            raise _Unreadable("no data chunk" if fmt is not None else "no fmt chunk")
        chunk, size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk == b"data":
            break
        if chunk == b"fmt ":
            fmt = stream.read(size)
            if len(fmt) < min(size, 16) or size < 16:
                raise _Unreadable(f"its fmt chunk is {min(size, len(fmt))} bytes, fewer than 16")
            stream.seek(size & 1, io.SEEK_CUR)
        else:
            stream.seek(size + (size & 1), io.SEEK_CUR)  # chunks are padded to an even length
    if fmt is None:
        raise _Unreadable("its data chunk comes before any fmt chunk")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    encoding = {WAVE_FORMAT_PCM: "pcm", WAVE_FORMAT_IEEE_FLOAT: "float"}.get(tag)
    described = f"WAV format tag 0x{tag:04X}"
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise _Unreadable(f"its WAVE_FORMAT_EXTENSIBLE fmt chunk is {len(fmt)} bytes, fewer than 40")
        subtype, tail = struct.unpack("<H", fmt[24:26])[0], fmt[26:40]
        known = {WAVE_FORMAT_PCM: "pcm", WAVE_FORMAT_IEEE_FLOAT: "float"}
        encoding = known.get(subtype) if tail == _GUID_TAIL else None
        described = f"WAVE_FORMAT_EXTENSIBLE sub-format {fmt[24:40].hex()}"
    if encoding is None or bits not in _WAV_BITS[encoding]:
        return described if encoding is None else f"WAV {encoding} {bits}-bit"
    if channels < 1 or rate < 1 or block_align != channels * bits // 8:
        raise _Unreadable(
            f"its fmt chunk is inconsistent ({channels} channels, {rate} Hz, {bits}-bit, block align {block_align})"
        )
    offset = stream.tell()
    available = stream.seek(0, io.SEEK_END) - offset
    if size > available:
        raise _Unreadable(
            f"its data chunk claims {size} bytes but the file holds {available} after it (truncated)"
        )
    return _WavLayout(encoding, bits, channels, rate, size // block_align, offset)


def _decode_wav(stream: BinaryIO, layout: _WavLayout) -> Any:
    """The interleaved samples of ``layout`` as float32 (frames · channels,), scaled as the module says."""
    import numpy as np

    stream.seek(layout.offset)
    raw = stream.read(layout.frames * layout.channels * layout.bits // 8)
    if layout.encoding == "float":
        return np.frombuffer(raw, dtype="<f4" if layout.bits == 32 else "<f8").astype(np.float32)
    if layout.bits == 8:
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if layout.bits == 24:
        octets = (
            np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        )  # (samples, 3), little-endian
        unsigned = octets[:, 0] | (octets[:, 1] << 8) | (octets[:, 2] << 16)  # (samples,) in [0, 2^24)
        return ((unsigned ^ 0x800000) - 0x800000).astype(np.float32) / float(1 << 23)  # two's complement
    dtype = "<i2" if layout.bits == 16 else "<i4"
    return np.frombuffer(raw, dtype=dtype).astype(np.float32) / float(1 << (layout.bits - 1))


def _soundfile(media: Media, what: str) -> Any:
    """The ``soundfile`` module, or a ConfigError saying how to install it (``what``: the file's format)."""
    try:
        import soundfile
    except ImportError:
        raise ConfigError(
            f"{media.where}: {media.path} is {what}, which is read with the soundfile package (libsndfile), and "
            f"soundfile is not installed: {SOUNDFILE_INSTALL}, or {CONVERT_HINT}"
        ) from None
    return soundfile


def _with_soundfile(media: Media, what: str, call: Callable[[Any, Any], Any]) -> Any:
    """``call(soundfile, source)`` on the row's file, libsndfile's errors made a ConfigError naming the row."""
    soundfile = _soundfile(media, what)
    try:
        with _open(media) as stream:
            return call(soundfile, stream)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:  # libsndfile refused it
        said = getattr(error, "error_string", None) or str(error)  # without "Error opening <_io.BytesIO ...>"
        raise ConfigError(
            f"{media.where}: {media.path} is not a readable audio file ({what}; libsndfile says: {said}); audio "
            "rows read WAV (PCM 8/16/24/32-bit, float 32/64-bit) and whatever libsndfile reads (FLAC, Ogg, MP3, "
            f"...): replace the file, {CONVERT_HINT}, or remove the row"
        ) from None


def _probe(media: Media) -> tuple[_WavLayout | None, str]:
    """``(layout, what)``: the WAV layout when this module decodes the file (else ``None``: soundfile will) and the
    file's format in words for messages."""
    try:
        with _open(media) as stream:
            head = stream.read(4)
            stream.seek(0)
            found = _wav_layout(stream)
    except _Unreadable as error:
        raise ConfigError(
            f"{media.where}: {media.path} is not a readable WAV file ({error}); replace the file, {CONVERT_HINT}, "
            "or remove the row"
        ) from None
    except OSError as error:
        raise ConfigError(f"{media.where}: cannot read {media.path} ({error})") from None
    if isinstance(found, _WavLayout):
        return found, found.info.format
    if isinstance(found, str):
        return None, found
    sniffed = _sniff(head)
    return None, f"{sniffed} audio" if sniffed else "not WAV (format unknown)"


def audio_info(media: Media) -> AudioInfo:
    """The header of ``media``'s audio file (nothing decoded), or a ConfigError naming the row."""
    layout, what = _probe(media)
    if layout is not None:
        return layout.info
    info = _with_soundfile(media, what, lambda soundfile, stream: soundfile.info(stream))
    return AudioInfo(
        f"{info.format} {info.subtype}", int(info.channels), int(info.samplerate), int(info.frames)
    )


def check_audio(media: Media) -> AudioInfo:
    """:func:`audio_info`, refusing a file with no samples."""
    info = audio_info(media)
    if info.frames <= 0:
        raise ConfigError(f"{media.where}: {media.path} holds no samples; replace the file or remove the row")
    return info


def audio_rate(media: Media) -> int:
    """The sampling rate (Hz) of ``media``'s audio file, from its header."""
    return audio_info(media).rate


def audio_length(media: Media) -> int:
    """The number of samples per channel of ``media``'s audio file, from its header (nothing decoded)."""
    return audio_info(media).frames


def read_audio(media: Media) -> tuple[Any, int]:
    """``(samples, rate)``: ``media``'s audio as a float32 numpy array (frames,) scaled as the module says, mixed
    down to mono by the mean of its channels, and its sampling rate in Hz."""
    import numpy as np

    layout, what = _probe(media)
    if layout is not None:
        with _open(media) as stream:
            samples = _decode_wav(stream, layout).reshape(-1, layout.channels)  # (frames, C)
        rate = layout.rate
    else:
        samples, rate = _with_soundfile(
            media, what, lambda soundfile, stream: soundfile.read(stream, dtype="float32", always_2d=True)
        )  # (frames, C)
    if samples.shape[0] == 0:
        raise ConfigError(f"{media.where}: {media.path} holds no samples; replace the file or remove the row")
    if not np.isfinite(samples).all():
        raise ConfigError(
            f"{media.where}: {media.path} ({what}) holds NaN or infinite samples; replace the file or remove the row"
        )
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)  # (frames,)
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)
