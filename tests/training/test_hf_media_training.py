"""``adapterhub train`` / ``evaluate`` on ``hf:`` image and audio datasets (``datasets.Image`` / ``datasets.Audio``
columns, built offline in tests/hf_media.py; the hub's ``load_dataset`` is faked to return them): a tiny random
ViT and a tiny random wav2vec2 train and evaluate from them as from local folders; a CTC model trains from an
``{Audio, transcript}`` dataset; data errors are named with this CLI's flags; another sampling rate is refused."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from adapterhub.cli import main
from tiny_models import build

datasets = pytest.importorskip("datasets", reason="the optional 'datasets' package is not installed")
hf_media = pytest.importorskip("hf_media")

FLAGS = ["--no-progress", "--batch-size", "4"]


def run(argv: list) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def fake_hub(monkeypatch):
    """``fake_hub({"owner/name": dataset})``: ``datasets.load_dataset(name)`` returns that dataset (read back
    from save_to_disk, so its cells are what a loaded dataset holds)."""
    store: dict[str, object] = {}
    calls: list[tuple] = []

    def load_dataset(*args):
        calls.append(args)
        if args[0] not in store:
            raise datasets.exceptions.DatasetNotFoundError(f"no dataset {args[0]}")
        return store[args[0]]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)

    def register(tmp_path: Path, name: str, data: object) -> list[tuple]:
        folder = tmp_path / name.replace("/", "__")
        data.save_to_disk(str(folder))  # type: ignore[attr-defined]
        store[name] = datasets.load_from_disk(str(folder))
        return calls

    return register


def _train_and_evaluate(argv: list, data: str, out: Path, tmp_path: Path) -> tuple[dict, dict]:
    assert run([*argv, "--output-dir", out, *FLAGS]) == 0
    results = json.loads((out / "results.json").read_text())
    report = tmp_path / "eval.json"
    assert run(["evaluate", out, "--data", data, "--output", report, *FLAGS]) == 0
    return results, json.loads(report.read_text())["metrics"]


def test_vit_trains_and_evaluates_from_an_hf_image_dataset(fake_hub, tmp_path, capsys):
    vit = tmp_path / "vit"
    build("vit").save_pretrained(vit)
    calls = fake_hub(tmp_path, "someone/colours", hf_media.colours(train=16, dev=8))
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        "hf:someone/colours",
        "--model",
        vit,
        "--method",
        "adapter:lora",
        "--epochs",
        "3",
    ]
    results, metrics = _train_and_evaluate([*argv, "--lr", "1e-2"], "hf:someone/colours", out, tmp_path)
    assert calls[0] == ("someone/colours",)
    assert "image preprocessing: no preprocessor_config.json" in capsys.readouterr().err
    assert results["status"] == "completed" and results["task"]["media"] == "image"
    assert results["steps"] == 12 and results["metric"]["name"] == "accuracy"
    info = json.loads((out / "best" / "training.json").read_text())
    assert info["media"] == "image" and info["labels"] == ["blue", "red"]  # the ClassLabel names
    assert metrics["accuracy"] == pytest.approx(results["dev_metrics"]["accuracy"])
    assert metrics["loss"] == pytest.approx(results["dev_metrics"]["loss"], abs=1e-5)


def test_wav2vec2_trains_and_evaluates_from_an_hf_audio_dataset(fake_hub, tmp_path, capsys):
    model_dir = tmp_path / "w2v"
    build("wav2vec2", do_stable_layer_norm=True).save_pretrained(model_dir)
    fake_hub(tmp_path, "someone/tones", hf_media.tones(train=16, dev=8))
    out = tmp_path / "run"
    argv = ["train", "--data", "hf:someone/tones", "--model", model_dir, "--method", "adapter:pfeiffer"]
    results, metrics = _train_and_evaluate(
        [*argv, "--epochs", "2", "--lr", "1e-2", "--audio-column", "clip"], "hf:someone/tones", out, tmp_path
    )
    assert "audio preprocessing: no preprocessor_config.json" in capsys.readouterr().err
    assert results["status"] == "completed" and results["task"]["media"] == "audio" and results["steps"] == 8
    info = json.loads((out / "best" / "training.json").read_text())
    assert info["labels"] == ["high", "low"] and info["head"]["pooling"] == "mean"
    assert metrics["accuracy"] == pytest.approx(results["dev_metrics"]["accuracy"])
    assert metrics["loss"] == pytest.approx(results["dev_metrics"]["loss"], abs=1e-5)


def test_ctc_trains_from_an_hf_dataset_of_clips_and_transcripts(fake_hub, tmp_path):
    rng = random.Random(0)
    cells = [
        {"bytes": hf_media.wav_bytes(hf_media.tone(300 + 400 * i, 1500, rng)), "path": f"{i}.wav"}
        for i in range(4)
    ]
    data = hf_media.with_features(
        {"speech": cells, "sentence": ["ab", "ba", "a b", "bb"]},
        {"speech": datasets.Audio(), "sentence": datasets.Value("string")},
    )
    fake_hub(tmp_path, "someone/asr", datasets.DatasetDict(train=data, validation=data))
    model_dir = tmp_path / "ctc"
    tiny = {"do_stable_layer_norm": True, "layerdrop": 0.0, "mask_time_prob": 0.0}
    build("wav2vec2", "ctc", vocab_size=12, **tiny).save_pretrained(model_dir)
    out = tmp_path / "run"
    argv = ["train", "--data", "hf:someone/asr", "--model", model_dir, "--method", "adapter:pfeiffer"]
    assert run([*argv, "--text-column", "sentence", "--max-steps", "2", "--output-dir", out, *FLAGS]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["task"]["kind"] == "ctc"
    assert {"wer", "cer"} <= set(results["dev_metrics"])


def _error(argv: list, capsys: pytest.CaptureFixture[str]) -> str:
    """The error line ``adapterhub`` prints for a failing command (which exits non-zero)."""
    capsys.readouterr()
    assert run(argv) != 0
    return capsys.readouterr().err


def test_data_errors_name_the_cli_flags(fake_hub, tmp_path, capsys):
    vit = tmp_path / "vit"
    build("vit").save_pretrained(vit)
    cells, labels = hf_media.colour_rows(4, 0)
    features = {
        "front": datasets.Image(),
        "back": datasets.Image(),
        "colour": datasets.ClassLabel(names=["blue", "red"]),
    }
    two = hf_media.with_features({"front": cells, "back": cells, "colour": labels}, features)
    fake_hub(tmp_path, "someone/two", two)
    base = ["train", "--data", "hf:someone/two", "--model", vit, "--output-dir", tmp_path / "run", *FLAGS]
    assert re.search(r"several image/audio columns.*pass --image-column <column>", _error(base, capsys))
    err = _error([*base, "--image-column", "back"], capsys)
    assert re.search(r"no label column 'label'.*pass --label-column <column>", err)
    assert re.search(
        r"no column 'photo'.*pass --image-column <column>", _error([*base, "--image-column", "photo"], capsys)
    )


def test_another_sampling_rate_is_resampled(fake_hub, tmp_path, capsys):
    """8 kHz clips train and evaluate on a 16 kHz model: each clip is resampled when its batch is built."""
    model_dir = tmp_path / "w2v"
    build("wav2vec2", do_stable_layer_norm=True).save_pretrained(model_dir)
    fake_hub(tmp_path, "someone/tones8k", hf_media.tones(train=4, dev=2, rate=8000))
    argv = ["train", "--data", "hf:someone/tones8k", "--model", model_dir, "--method", "adapter:pfeiffer"]
    assert run([*argv, "--max-steps", "1", "--output-dir", tmp_path / "run", *FLAGS]) == 0
