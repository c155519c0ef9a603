"""Image and audio rows read by ``load_task``: paths relative to the row file, every file checked, bad rows named
by file and line."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest
from PIL import Image

from adapterhub.data import Example, TaskData, load_task
from adapterhub.data.media import read_audio, read_image
from adapterhub.errors import ConfigError


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_wav(path: Path, samples: list[int], rate: int = 16000, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(b"".join(int(s).to_bytes(2, "little", signed=True) for s in samples))


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "colours"
    (folder / "pics").mkdir(parents=True)
    for i in range(4):
        Image.new("L" if i == 3 else "RGB", (7, 5), color=(i * 60) if i == 3 else (i * 60, 10, 20)).save(
            folder / "pics" / f"{i}.png"
        )
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (3, 3), color=(0, 0, 255)).save(outside)
    write_rows(
        folder / "train.jsonl",
        [
            {"image": "pics/0.png", "label": "red"},
            {"image": "pics/1.png", "label": "blue"},
            {"image": str(outside), "label": "blue"},
        ],
    )
    write_rows(folder / "dev.jsonl", [{"image": "pics/3.png", "label": "red"}])
    (folder / "task.json").write_text('{"kind": "classification"}', encoding="utf-8")
    return folder


def test_load_task_reads_image_rows(image_dir, tmp_path):
    task = load_task(image_dir)
    assert task.media == "image" and task.kind == "classification" and task.labels == ("blue", "red")
    assert [e.label for e in task.train] == [1, 0, 0] and task.dev[0].label == 1
    assert task.train[0].image == str((image_dir / "pics" / "0.png").resolve())
    assert task.train[2].image == str((tmp_path / "elsewhere.png").resolve())  # absolute paths kept
    assert task.train[0].text == "" and task.train[0].audio is None
    assert task.train[1].media.where.endswith("train.jsonl, line 2")
    grey = read_image(task.dev[0].media)
    assert grey.mode == "RGB" and grey.size == (7, 5)  # grey converted to RGB, size untouched until batching


def test_csv_image_rows_and_subset(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "rows.csv").write_text(
        "image,label\n" + "".join(f"a.png,{i % 2}\n" for i in range(10)), encoding="utf-8"
    )
    task = load_task(tmp_path / "rows.csv")
    assert task.media == "image" and len(task.train) + len(task.dev) == 10
    assert task.subset(train=3).media == "image"


def test_text_column_wins_over_image(tmp_path):
    write_rows(
        tmp_path / "rows.jsonl", [{"text": "hi", "image": "nope.png", "label": i % 2} for i in range(10)]
    )
    task = load_task(tmp_path / "rows.jsonl")
    assert task.media is None and task.train[0].text == "hi"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"image": "pics/missing.png", "label": "red"}, r"line 2: image file 'pics/missing.png' not found"),
        ({"image": "pics/broken.png", "label": "red"}, r"line 2: .*broken.png is not a readable image"),
        ({"label": "red"}, r"line 2: no image path in column 'image' \(got nothing\)"),
        ({"image": 7, "label": "red"}, r"line 2: no image path in column 'image' \(got int 7\)"),
    ],
)
def test_bad_image_rows_name_file_and_line(image_dir, row, message):
    (image_dir / "pics" / "broken.png").write_bytes(b"\x89PNG not really")
    write_rows(image_dir / "train.jsonl", [{"image": "pics/0.png", "label": "red"}, row])
    with pytest.raises(ConfigError, match=r"train\.jsonl, " + message):
        load_task(image_dir)


def test_image_rows_refuse_multiple_choice_and_mixing(image_dir):
    with pytest.raises(ConfigError, match="image rows are for classification"):
        load_task(image_dir, kind="multiple_choice")
    write_rows(image_dir / "dev.jsonl", [{"text": "words", "label": "red"}])  # the train rows decide: images
    with pytest.raises(ConfigError, match=r"dev\.jsonl, line 1: no image path in column 'image'"):
        load_task(image_dir)
    media = load_task(image_dir / "train.jsonl", dev_split_fraction=0.5).train[0]
    with pytest.raises(ConfigError, match=r"mixes rows of several kinds \(image, text\)"):
        TaskData("mixed", "classification", ("a",), train=(media, Example("words", label=0)))


def test_audio_rows(tmp_path):
    write_wav(tmp_path / "a.wav", [0, 16384, -16384, 32767])
    write_wav(tmp_path / "stereo.wav", [0, 1, 2, 3], channels=2)
    write_rows(
        tmp_path / "train.jsonl", [{"audio": "a.wav", "label": "yes"}, {"audio": "a.wav", "label": "no"}]
    )
    task = load_task(tmp_path)
    assert task.media == "audio" and task.train[0].audio == str((tmp_path / "a.wav").resolve())
    samples, rate = read_audio(task.train[0].media)
    assert rate == 16000 and samples.tolist() == [0.0, 0.5, -0.5, 32767 / 32768]
    write_rows(
        tmp_path / "train.jsonl", [{"audio": "a.wav", "label": "yes"}, {"audio": "stereo.wav", "label": "no"}]
    )
    task = load_task(tmp_path)
    stereo = next(e.media for e in (*task.train, *task.dev) if e.audio.endswith("stereo.wav"))
    # several channels: read as their mean per frame
    samples, rate = read_audio(stereo)
    assert rate == 16000 and samples.tolist() == [0.5 / 32768, 2.5 / 32768]  # frames (0, 1) and (2, 3)
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as writer:  # 8-bit WAV: unsigned, 128 is zero
        writer.setnchannels(1)
        writer.setsampwidth(1)
        writer.setframerate(16000)
        writer.writeframes(bytes([128, 192]))
    write_rows(
        tmp_path / "train.jsonl", [{"audio": "a.wav", "label": "yes"}, {"audio": "8bit.wav", "label": "no"}]
    )
    task = load_task(tmp_path)
    eight = next(e.media for e in (*task.train, *task.dev) if e.audio.endswith("8bit.wav"))
    assert read_audio(eight)[0].tolist() == [0.0, 0.5]
    (tmp_path / "junk.wav").write_bytes(b"RIFF1234")
    write_rows(
        tmp_path / "train.jsonl", [{"audio": "junk.wav", "label": "yes"}, {"audio": "a.wav", "label": "no"}]
    )
    with pytest.raises(ConfigError, match=r"train\.jsonl, line 1: .*junk.wav is not a readable audio file"):
        load_task(tmp_path)
