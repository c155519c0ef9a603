"""Tiny HuggingFace image and audio datasets built offline: PNGs written by Pillow, 16-bit mono WAVs written by the
standard library's ``wave``, stored as ``datasets.Image`` / ``datasets.Audio`` columns (bytes embedded, as the
hub's parquet files hold them).

``datasets.Audio.encode_example`` needs torchcodec even for bytes, so the columns are built as plain
``{"bytes", "path"}`` structs and then cast to the ``Image`` / ``Audio`` features (an Arrow-level cast: the same
storage, nothing re-encoded)."""

from __future__ import annotations

import io
import math
import random
import struct
import wave
from typing import Any

import datasets
from PIL import Image

RATE = 16_000


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (20, 18)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color=colour).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(samples: list[int], rate: int = RATE, channels: int = 1) -> bytes:
    """16-bit PCM WAV of ``samples`` (ints in [-32768, 32767], interleaved when ``channels`` > 1)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return buffer.getvalue()


def tone(frequency: float, length: int, rng: random.Random, rate: int = RATE) -> list[int]:
    return [
        int(8000 * math.sin(2 * math.pi * frequency * t / rate) + rng.randint(-400, 400))
        for t in range(length)
    ]


def with_features(columns: dict[str, list[Any]], features: dict[str, Any]) -> datasets.Dataset:
    """A dataset of ``columns`` (Image / Audio cells as ``{"bytes", "path"}`` dicts) cast to ``features``."""
    raw = datasets.Dataset.from_dict(columns)
    return raw.cast(datasets.Features(features))


def colour_rows(count: int, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
    """``count`` red (label 1) / blue (label 0) image cells, alternating, with a little noise."""
    rng = random.Random(seed)
    cells, labels = [], []
    for i in range(count):
        red = i % 2 == 0
        noise = [rng.randint(0, 50) for _ in range(3)]
        colour = (205 + noise[0], noise[1], noise[2]) if red else (noise[0], noise[1], 205 + noise[2])
        cells.append({"bytes": png_bytes(colour), "path": f"pics/{seed}-{i}.png"})
        labels.append(1 if red else 0)
    return cells, labels


def colours(train: int = 16, dev: int = 8, image_column: str = "img") -> datasets.DatasetDict:
    """Red vs blue pictures: an ``Image`` column and a ``ClassLabel(["blue", "red"])`` label, train + validation."""
    features = {image_column: datasets.Image(), "label": datasets.ClassLabel(names=["blue", "red"])}
    splits = {}
    for name, count, seed in (("train", train, 0), ("validation", dev, 1)):
        cells, labels = colour_rows(count, seed)
        splits[name] = with_features({image_column: cells, "label": labels}, features)
    return datasets.DatasetDict(splits)


def tone_rows(count: int, seed: int, rate: int = RATE) -> tuple[list[dict[str, Any]], list[int]]:
    """``count`` high (2 kHz, label 0) / low (300 Hz, label 1) tone clips of 400..900 samples, alternating."""
    rng = random.Random(seed)
    cells, labels = [], []
    for i in range(count):
        high = i % 2 == 0
        clip = wav_bytes(tone(2000 if high else 300, rng.randint(400, 900), rng, rate), rate)
        cells.append({"bytes": clip, "path": f"clips/{seed}-{i}.wav"})
        labels.append(0 if high else 1)
    return cells, labels


def tones(train: int = 16, dev: int = 8, rate: int = RATE) -> datasets.DatasetDict:
    """High vs low tones: an ``Audio`` column ``clip`` and a ``ClassLabel(["high", "low"])`` label."""
    features = {"clip": datasets.Audio(), "label": datasets.ClassLabel(names=["high", "low"])}
    splits = {}
    for name, count, seed in (("train", train, 0), ("validation", dev, 1)):
        cells, labels = tone_rows(count, seed, rate)
        splits[name] = with_features({"clip": cells, "label": labels}, features)
    return datasets.DatasetDict(splits)
