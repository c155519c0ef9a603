"""Audio rows in every format :mod:`adapterhub.data.audio` reads: one known signal (a 440 Hz sine plus a 200 Hz ->
3 kHz chirp, peak below 0.9) written as 8/16/24/32-bit PCM WAV (the standard library's ``wave``, quantised here),
float WAV and WAVE_FORMAT_EXTENSIBLE (written here with ``struct``), FLAC, Ogg/Vorbis and MP3 (soundfile), read
back and compared with the source within each format's quantisation step; rows of each format through
``load_task``; the errors (soundfile missing, corrupt or truncated files, unsupported encodings)."""

from __future__ import annotations

import json
import math
import struct
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from adapterhub.data import load_task
from adapterhub.data.audio import audio_info, check_audio, read_audio
from adapterhub.data.resample import resample
from adapterhub.data.task import Media
from adapterhub.errors import ConfigError

soundfile = pytest.importorskip("soundfile")

RATE = 16_000
LENGTH = 4000  # 0.25 s
WHERE = "train.jsonl, line 3"


def signal(length: int = LENGTH, rate: int = RATE) -> np.ndarray:
    """0.45 · sin(2π 440 t) + 0.45 · sin(2π (200 t + (f1 - f0) t² / 2T)), a sine and a linear chirp (float64)."""
    t = np.arange(length) / rate
    duration = length / rate
    chirp = np.sin(2 * np.pi * (200 * t + (3000 - 200) / (2 * duration) * t**2))
    return 0.45 * np.sin(2 * np.pi * 440 * t) + 0.45 * chirp


def quantise(x: np.ndarray, bits: int) -> np.ndarray:
    """The integers a ``bits``-bit PCM writer stores for ``x`` in [-1, 1]: round(x · 2^(bits-1)), clipped."""
    scale = 2 ** (bits - 1)
    return np.clip(np.round(x * scale), -scale, scale - 1).astype(np.int64)


def write_pcm(path: Path, x: np.ndarray, bits: int, channels: int = 1, rate: int = RATE) -> np.ndarray:
    """``x`` (frames · channels interleaved) as ``bits``-bit PCM WAV through ``wave``; returns the stored ints."""
    q = quantise(x, bits)
    if bits == 8:
        raw = (q + 128).astype(np.uint8).tobytes()  # 8-bit WAV is unsigned, offset 128
    elif bits == 24:
        raw = q.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()  # the low 3 bytes, little-endian
    else:
        raw = q.astype("<i2" if bits == 16 else "<i4").tobytes()
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(bits // 8)
        writer.setframerate(rate)
        writer.writeframes(raw)
    return q


def riff(fmt: bytes, data: bytes, extra: bytes = b"") -> bytes:
    """A RIFF/WAVE file of a ``fmt `` chunk, ``extra`` chunks, then a ``data`` chunk (padded to even length)."""
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt_chunk(tag: int, channels: int, bits: int, rate: int = RATE, subformat: int | None = None) -> bytes:
    """A ``fmt `` chunk: 16 bytes, or 40 for WAVE_FORMAT_EXTENSIBLE with ``subformat`` (1 PCM, 3 float)."""
    align = channels * bits // 8
    head = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if subformat is None:
        return head
    guid = struct.pack("<H", subformat) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return head + struct.pack("<HHI", 22, bits, 0) + guid


def media(path: Path) -> Media:
    return Media("audio", str(path), WHERE)


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_pcm_wav_of_every_width_reads_as_its_ints_over_two_to_the_bits_minus_one(bits, tmp_path):
    x = signal()
    q = write_pcm(tmp_path / "a.wav", x, bits)
    samples, rate = read_audio(media(tmp_path / "a.wav"))
    assert rate == RATE and samples.dtype == np.float32 and samples.shape == (LENGTH,)
    expected = (q / 2 ** (bits - 1)).astype(np.float32)
    assert np.array_equal(samples, expected)  # the documented rule, exactly
    step = 2.0 ** (1 - bits)
    assert np.abs(samples - x).max() <= step / 2 + 1e-7  # within half a quantisation step of the source
    assert audio_info(media(tmp_path / "a.wav")).format == f"WAV PCM {bits}-bit"
    # libsndfile reads the same numbers from the same file
    assert np.array_equal(samples, soundfile.read(tmp_path / "a.wav", dtype="float32")[0])


def test_8_bit_wav_is_unsigned_with_128_as_zero(tmp_path):
    with wave.open(str(tmp_path / "u8.wav"), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(1)
        writer.setframerate(8000)
        writer.writeframes(bytes([128, 192, 0, 255]))
    samples, rate = read_audio(media(tmp_path / "u8.wav"))
    assert rate == 8000 and samples.tolist() == [0.0, 0.5, -1.0, 127 / 128]


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("extensible", [False, True])
def test_float_wav_plain_and_extensible_reads_as_stored(bits, extensible, tmp_path):
    x = signal()
    data = x.astype("<f4" if bits == 32 else "<f8").tobytes()
    fmt = fmt_chunk(0xFFFE, 1, bits, subformat=3) if extensible else fmt_chunk(3, 1, bits)
    (tmp_path / "f.wav").write_bytes(riff(fmt, data, extra=b"LIST" + struct.pack("<I", 3) + b"abc\0"))
    samples, rate = read_audio(media(tmp_path / "f.wav"))
    assert rate == RATE and np.array_equal(samples, x.astype(np.float32))
    assert audio_info(media(tmp_path / "f.wav")).format == f"WAV float {bits}-bit"


def test_extensible_pcm_24_bit_stereo_is_the_mean_of_its_channels(tmp_path):
    left, right = signal(), -0.5 * signal()
    q = quantise(np.stack([left, right], axis=1).reshape(-1), 24)  # (frames · 2,), interleaved
    data = q.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    (tmp_path / "x.wav").write_bytes(riff(fmt_chunk(0xFFFE, 2, 24, subformat=1), data))
    samples, _ = read_audio(media(tmp_path / "x.wav"))
    per_channel = (q / 2**23).astype(np.float32).reshape(-1, 2)
    assert samples.shape == (LENGTH,) and np.array_equal(samples, per_channel.mean(axis=1, dtype=np.float32))
    assert np.abs(samples - 0.25 * signal()).max() < 2**-23
    assert (
        audio_info(media(tmp_path / "x.wav")).channels == 2
        and read_audio(media(tmp_path / "x.wav"))[1] == RATE
    )


@pytest.mark.parametrize("subtype,bits", [("PCM_16", 16), ("PCM_24", 24)])
def test_flac_is_lossless(subtype, bits, tmp_path):
    x = signal()
    q = quantise(x, bits)
    soundfile.write(tmp_path / "a.flac", q.astype(np.int32) << (32 - bits), RATE, subtype=subtype)
    samples, rate = read_audio(media(tmp_path / "a.flac"))
    assert rate == RATE and np.array_equal(samples, (q / 2 ** (bits - 1)).astype(np.float32))  # exact
    assert audio_info(media(tmp_path / "a.flac")) == check_audio(media(tmp_path / "a.flac"))
    assert audio_info(media(tmp_path / "a.flac")).frames == LENGTH


@pytest.mark.parametrize(
    "name,container,subtype",
    [("a.ogg", "OGG", "VORBIS"), ("a.mp3", "MP3", "MPEG_LAYER_III")],
)
def test_lossy_formats_come_back_within_a_stated_tolerance(name, container, subtype, tmp_path):
    """Lossy codecs: the error's RMS is at most 10% of the signal's (an SNR of at least 20 dB; Vorbis measures
    about 5.6% on this chirp, MP3 about 1.4%), with the same number of samples."""
    if container not in soundfile.available_formats():
        pytest.skip(f"this libsndfile does not write {container}")
    x = signal()
    soundfile.write(tmp_path / name, x.astype(np.float32), RATE, format=container, subtype=subtype)
    samples, rate = read_audio(media(tmp_path / name))
    assert rate == RATE and samples.shape == (LENGTH,)
    rms = math.sqrt(float(np.mean(x**2)))
    assert math.sqrt(float(np.mean((samples - x) ** 2))) <= 0.1 * rms


def test_rows_of_every_format_load_and_hf_cells_of_flac_bytes_decode(tmp_path):
    x = signal()
    write_pcm(tmp_path / "a.wav", x, 24)
    soundfile.write(tmp_path / "b.flac", x.astype(np.float32), RATE, subtype="PCM_16")
    soundfile.write(tmp_path / "c.ogg", x.astype(np.float32), 8000, subtype="VORBIS")
    rows = [
        {"audio": name, "label": "yes" if i % 2 else "no"}
        for i, name in enumerate(["a.wav", "b.flac", "c.ogg"])
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = load_task(tmp_path / "train.jsonl", dev_split_fraction=0.34)
    assert task.media == "audio" and len(task.train) + len(task.dev) == 3
    rates = {Path(e.audio).name: read_audio(e.media)[1] for e in (*task.train, *task.dev)}
    assert rates == {"a.wav": RATE, "b.flac": RATE, "c.ogg": 8000}
    # an HF Audio cell holding FLAC bytes reads as the file does
    cell = Media("audio", "b.flac", WHERE, data=(tmp_path / "b.flac").read_bytes())
    assert np.array_equal(read_audio(cell)[0], read_audio(media(tmp_path / "b.flac"))[0])


def test_a_flac_clip_at_another_rate_is_resampled_in_its_batch(tmp_path):
    from adapterhub.training.media_batches import MediaProcessor

    x = signal(2000, 8000)
    soundfile.write(tmp_path / "low.flac", x.astype(np.float32), 8000, subtype="PCM_16")
    processor = MediaProcessor("audio", "fallback")
    values = processor(media(tmp_path / "low.flac"))  # (samples,) at 16 kHz, normalised
    assert values.shape == (4000,)  # ceil(2000 · 16000 / 8000)
    samples, _ = read_audio(media(tmp_path / "low.flac"))
    up = resample(torch.from_numpy(samples), 8000, RATE)
    assert torch.allclose(values, (up - up.mean()) / torch.sqrt(up.var(unbiased=False) + 1e-7), atol=1e-5)


def test_without_soundfile_wav_still_reads_and_flac_names_the_install(tmp_path, monkeypatch):
    write_pcm(tmp_path / "a.wav", signal(), 16)
    soundfile.write(tmp_path / "b.flac", signal().astype(np.float32), RATE, subtype="PCM_16")
    monkeypatch.setitem(sys.modules, "soundfile", None)  # `import soundfile` raises ImportError
    assert read_audio(media(tmp_path / "a.wav"))[1] == RATE
    rows = [{"audio": "a.wav", "label": "yes"}, {"audio": "b.flac", "label": "no"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(
        ConfigError,
        match=r"train\.jsonl, line 2: .*b\.flac is FLAC audio, .*soundfile is not installed: "
        r"pip install 'adapterhub\[audio\]'",
    ):
        load_task(tmp_path / "train.jsonl", dev_split_fraction=0.5)


def test_corrupt_and_truncated_files_name_the_file_and_row(tmp_path):
    soundfile.write(tmp_path / "a.flac", signal().astype(np.float32), RATE, subtype="PCM_16")
    whole = (tmp_path / "a.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(
        whole[: len(whole) // 2]
    )  # header intact: checked, then fails to decode
    check_audio(media(tmp_path / "cut.flac"))
    with pytest.raises(ConfigError, match=r"line 3: .*cut\.flac is not a readable audio file \(FLAC audio; "):
        read_audio(media(tmp_path / "cut.flac"))
    (tmp_path / "junk.flac").write_bytes(b"fLaC" + bytes(64))
    with pytest.raises(
        ConfigError, match=r"line 3: .*junk\.flac is not a readable audio file .*libsndfile says"
    ):
        check_audio(media(tmp_path / "junk.flac"))
    data = quantise(signal(), 16).astype("<i2").tobytes()
    (tmp_path / "short.wav").write_bytes(riff(fmt_chunk(1, 1, 16), data)[: 44 + len(data) // 2])
    with pytest.raises(ConfigError, match=r"line 3: .*short\.wav is not a readable WAV file .*truncated"):
        check_audio(media(tmp_path / "short.wav"))
    (tmp_path / "nofmt.wav").write_bytes(b"RIFF" + struct.pack("<I", 12) + b"WAVEdata" + struct.pack("<I", 0))
    with pytest.raises(
        ConfigError, match=r"nofmt\.wav is not a readable WAV file \(its data chunk comes before"
    ):
        check_audio(media(tmp_path / "nofmt.wav"))
    (tmp_path / "empty.wav").write_bytes(riff(fmt_chunk(1, 1, 16), b""))
    with pytest.raises(ConfigError, match=r"line 3: .*empty\.wav holds no samples"):
        check_audio(media(tmp_path / "empty.wav"))


def test_unsupported_encodings_and_non_finite_samples_are_refused(tmp_path):
    (tmp_path / "odd.wav").write_bytes(riff(fmt_chunk(0x1234, 1, 16), bytes(64)))
    with pytest.raises(
        ConfigError, match=r"line 3: .*odd\.wav is not a readable audio file \(WAV format tag 0x1234"
    ):
        check_audio(media(tmp_path / "odd.wav"))
    (tmp_path / "notes.ogg").write_text("not audio at all", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"notes\.ogg is not a readable audio file \(not WAV \(format unknown\)"
    ):
        check_audio(media(tmp_path / "notes.ogg"))
    bad = signal(8).astype("<f4")
    bad[3] = np.nan
    (tmp_path / "nan.wav").write_bytes(riff(fmt_chunk(3, 1, 32), bad.tobytes()))
    check_audio(media(tmp_path / "nan.wav"))  # the header is fine
    with pytest.raises(ConfigError, match=r"line 3: .*nan\.wav \(WAV float 32-bit\) holds NaN or infinite"):
        read_audio(media(tmp_path / "nan.wav"))


def test_wav_mu_law_is_left_to_libsndfile(tmp_path):
    """A WAV codec this module does not decode (µ-law) goes to soundfile, which decodes it."""
    x = signal()
    soundfile.write(tmp_path / "mu.wav", x.astype(np.float32), RATE, subtype="ULAW")
    samples, rate = read_audio(media(tmp_path / "mu.wav"))
    assert rate == RATE and np.abs(samples - x).max() < 0.02  # 8-bit logarithmic: coarse near the peaks
    assert audio_info(media(tmp_path / "mu.wav")).format == "WAV ULAW"


def test_stored_bytes_and_files_agree_for_every_wav_width(tmp_path):
    for bits in (8, 16, 24, 32):
        write_pcm(tmp_path / f"{bits}.wav", signal(), bits, channels=2)
        from_file = read_audio(media(tmp_path / f"{bits}.wav"))[0]
        cell = Media("audio", f"{bits}.wav", WHERE, data=(tmp_path / f"{bits}.wav").read_bytes())
        assert np.array_equal(read_audio(cell)[0], from_file) and from_file.shape == (LENGTH // 2,)
