"""load_task on HuggingFace image and audio datasets (``datasets.Image`` / ``datasets.Audio`` columns), built
offline (tests/hf_media.py) and read from save_to_disk folders, parquet files and faked ``hf:`` names."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterhub.data import load_task
from adapterhub.data.media import read_audio, read_image
from adapterhub.errors import ConfigError

datasets = pytest.importorskip("datasets", reason="the optional 'datasets' package is not installed")
hf_media = pytest.importorskip("hf_media")


def _fake_hub(monkeypatch: pytest.MonkeyPatch, loaded: object) -> list[tuple]:
    calls: list[tuple] = []

    def fake_load_dataset(*args):
        calls.append(args)
        return loaded

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_image_column_found_by_feature_type_classlabel_names_are_the_labels(tmp_path: Path) -> None:
    hf_media.colours(train=4, dev=2).save_to_disk(str(tmp_path / "colours"))
    task = load_task(tmp_path / "colours")
    assert task.kind == "classification" and task.media == "image"
    assert task.labels == ("blue", "red")
    assert [e.label for e in task.train] == [1, 0, 1, 0] and len(task.dev) == 2
    first = task.train[0].media
    assert (
        first is not None and first.path == "0-0.png"
    )  # datasets keeps the basename and first.data is not None
    assert "split 'train', row 1" in first.where
    image = read_image(first)
    assert image.size == (20, 18) and image.mode == "RGB" and image.getpixel((0, 0))[0] > 200  # red


def test_audio_from_a_parquet_hub_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf_media.tones(train=4, dev=2)["train"].to_parquet(str(tmp_path / "train.parquet"))
    load_parquet = datasets.load_dataset
    loaded = load_parquet("parquet", data_files={"train": str(tmp_path / "train.parquet")})
    calls = _fake_hub(monkeypatch, loaded)
    task = load_task("hf:someone/tones", dev_split_fraction=0.25)
    assert calls == [("someone/tones",)]
    assert (
        task.media == "audio"
        and task.labels == ("high", "low")
        and (len(task.train), len(task.dev)) == (3, 1)
    )
    samples, rate = read_audio(task.train[0].media)
    assert rate == 16_000 and samples.dtype.name == "float32" and 400 <= samples.shape[0] <= 900
    assert float(samples.min()) >= -1.0 and float(samples.max()) < 1.0


def test_audio_with_transcripts_is_a_ctc_task(tmp_path: Path) -> None:
    cells, _ = hf_media.tone_rows(3, 0)
    data = hf_media.with_features(
        {"speech": cells, "sentence": ["hi  there", "yes", "no"]},
        {"speech": datasets.Audio(), "sentence": datasets.Value("string")},
    )
    datasets.DatasetDict(train=data, validation=data).save_to_disk(str(tmp_path / "asr"))
    task = load_task(tmp_path / "asr", text_column="sentence")
    assert task.kind == "ctc" and task.media == "audio" and task.train[0].text == "hi there"
    hf_media.colours(2, 2).save_to_disk(str(tmp_path / "pics"))
    with pytest.raises(ConfigError, match=r"no datasets.Audio column.*ctc"):
        load_task(tmp_path / "pics", kind="ctc")


def test_a_named_column_must_exist_and_be_of_that_type(tmp_path: Path) -> None:
    hf_media.colours(2, 2).save_to_disk(str(tmp_path / "colours"))
    with pytest.raises(
        ConfigError, match=r"no column 'photo'; the columns are: img \(Image\), label \(ClassLabel\)"
    ):
        load_task(tmp_path / "colours", image_column="photo")
    with pytest.raises(ConfigError, match=r"column 'label' is a ClassLabel, not a datasets.Image column"):
        load_task(tmp_path / "colours", image_column="label")
    with pytest.raises(ConfigError, match=r"column 'img' is a Image, not a datasets.Audio column"):
        load_task(tmp_path / "colours", audio_column="img")
    with pytest.raises(ConfigError, match=r"name one of the columns"):
        load_task(tmp_path / "colours", image_column="img", audio_column="img")


def test_a_text_dataset_named_as_images_is_refused(tmp_path: Path) -> None:
    text = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    text.save_to_disk(str(tmp_path / "text"))
    with pytest.raises(
        ConfigError, match=r"no column 'image'.*the columns are: text \(Value\), label \(Value\)"
    ):
        load_task(tmp_path / "text", image_column="image")
    with pytest.raises(ConfigError, match=r"image_column / audio_column name a HuggingFace dataset"):
        load_task(tmp_path / "text" / "state.json", image_column="image")


def test_several_candidate_columns_must_be_named(tmp_path: Path) -> None:
    cells, labels = hf_media.colour_rows(4, 0)
    data = hf_media.with_features(
        {"front": cells, "back": list(reversed(cells)), "label": labels},
        {
            "front": datasets.Image(),
            "back": datasets.Image(),
            "label": datasets.ClassLabel(names=["blue", "red"]),
        },
    )
    data.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(
        ConfigError, match=r"several image/audio columns: front \(image\), back \(image\); .*image_column"
    ):
        load_task(tmp_path / "two")
    task = load_task(tmp_path / "two", image_column="back", dev_split_fraction=0.25)
    assert task.media == "image" and {e.media.path for e in (*task.train, *task.dev)} == {
        f"0-{i}.png" for i in range(4)
    }


def test_missing_label_column_names_the_flag(tmp_path: Path) -> None:
    cells, labels = hf_media.colour_rows(4, 0)
    data = hf_media.with_features(
        {"img": cells, "colour": labels},
        {"img": datasets.Image(), "colour": datasets.ClassLabel(names=["blue", "red"])},
    )
    data.save_to_disk(str(tmp_path / "colours"))
    with pytest.raises(
        ConfigError, match=r"no label column 'label' \(the columns are: image, colour\).*label_column"
    ):
        load_task(tmp_path / "colours")
    task = load_task(tmp_path / "colours", label_column="colour", dev_split_fraction=0.25)
    assert task.labels == ("blue", "red")


def test_unknown_split_layout_names_the_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    only_test = datasets.DatasetDict(test=hf_media.colours(2, 2)["train"])
    _fake_hub(monkeypatch, only_test)
    with pytest.raises(ConfigError, match=r"no 'train' split \(it has: test\)"):
        load_task("hf:someone/pictures")


def test_flac_and_ogg_cells_are_decoded_and_corrupt_ones_name_their_format(tmp_path: Path) -> None:
    soundfile = pytest.importorskip("soundfile")
    import io

    import numpy as np

    tone = (0.5 * np.sin(np.arange(800) / 4)).astype(np.float32)
    encoded = []
    for container, subtype in (("FLAC", "PCM_16"), ("OGG", "VORBIS")):
        buffer = io.BytesIO()
        soundfile.write(buffer, tone, 16000, format=container, subtype=subtype)
        encoded.append(buffer.getvalue())
    cells = [{"bytes": encoded[0], "path": "a.flac"}, {"bytes": encoded[1], "path": "b.ogg"}]
    data = hf_media.with_features(
        {"audio": cells, "label": [0, 1]}, {"audio": datasets.Audio(), "label": datasets.Value("int64")}
    )
    data.save_to_disk(str(tmp_path / "good"))
    task = load_task(tmp_path / "good", dev_split_fraction=0.5)
    decoded = {e.audio: read_audio(e.media) for e in (*task.train, *task.dev)}
    assert decoded["a.flac"][1] == 16000 and np.abs(decoded["a.flac"][0] - tone).max() <= 2**-16
    assert decoded["b.ogg"][0].shape == (800,)
    cells = [{"bytes": b"fLaC" + bytes(64), "path": "a.flac"}, {"bytes": b"ID3" + bytes(64), "path": "b.mp3"}]
    data = hf_media.with_features(
        {"audio": cells, "label": [0, 1]}, {"audio": datasets.Audio(), "label": datasets.Value("int64")}
    )
    data.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(
        ConfigError,
        match=r"row \d: (a.flac|b.mp3) is not a readable audio file \((FLAC|MP3) audio; libsndfile says",
    ):
        load_task(tmp_path / "bad", dev_split_fraction=0.5)


def test_a_cell_with_only_a_path_reads_that_file_and_refuses_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``load_dataset("imagefolder", ...)`` gives: cells that name local files (save_to_disk would embed them)."""
    picture = tmp_path / "red.png"
    picture.write_bytes(hf_media.png_bytes((255, 0, 0)))
    data = hf_media.with_features(
        {"img": [{"bytes": None, "path": str(picture)}] * 2, "label": [0, 1]},
        {"img": datasets.Image(), "label": datasets.Value("int64")},
    )
    _fake_hub(monkeypatch, data)
    task = load_task("hf:someone/folder", dev_split_fraction=0.5)
    media = task.train[0].media
    assert media is not None and media.data is None and media.path == str(picture)
    assert read_image(media).getpixel((0, 0)) == (255, 0, 0)
    picture.unlink()
    with pytest.raises(ConfigError, match=r"holds no bytes, only the path .*red.png.*embedded"):
        load_task("hf:someone/folder", dev_split_fraction=0.5)
