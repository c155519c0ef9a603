"""Audio rows (``{"audio": "wav/0.wav", "label": ...}``, 16-bit mono WAV written with the standard library's
``wave``) through ``adapterhub train`` / ``evaluate`` on a tiny random wav2vec2 saved to disk: a bottleneck adapter
and LoRA train (the base stays frozen), the head mean-pools over the real frames only (a clip padded in a batch
gives the logits it gives alone), the model folder's feature extractor is used when it has one, and other sample
rates are refused with the conversion to run."""

from __future__ import annotations

import json
import math
import random
import struct
import wave
from pathlib import Path

import pytest
import torch

from adapterhub.cli import main
from adapterhub.data import load_task
from adapterhub.training.loop import train
from adapterhub.training.media_batches import collate_media, load_media_processor, media_datasets
from adapterhub.training.modeling import load_trained
from tiny_models import build

RATE = 16_000


def write_wav(path: Path, samples: list[int], rate: int = RATE) -> None:
    """16-bit PCM mono WAV of ``samples`` (ints in [-32768, 32767])."""
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(struct.pack(f"<{len(samples)}h", *samples))


def tone(frequency: float, length: int, rng: random.Random) -> list[int]:
    return [
        int(8000 * math.sin(2 * math.pi * frequency * t / RATE) + rng.randint(-400, 400))
        for t in range(length)
    ]


@pytest.fixture
def tones_dir(tmp_path):
    """High (2 kHz) vs low (300 Hz) tones of 400..900 samples: 16 train rows, 8 dev rows."""
    folder = tmp_path / "tones"
    (folder / "wav").mkdir(parents=True)
    rng = random.Random(0)
    rows = []
    for i in range(24):
        high = i % 2 == 0
        write_wav(folder / "wav" / f"{i}.wav", tone(2000 if high else 300, rng.randint(400, 900), rng))
        rows.append({"audio": f"wav/{i}.wav", "label": "high" if high else "low"})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]), encoding="utf-8")
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[16:]), encoding="utf-8")
    return folder


def save_wav2vec2(folder: Path, **overrides: object) -> Path:
    build("wav2vec2", **overrides).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", ["adapter:pfeiffer", "adapter:lora"])
def test_train_and_evaluate_through_the_cli(method, tones_dir, tmp_path, capsys):
    """A layer-norm wav2vec2: evaluate's batches of 4 give the dev loss training's batch of 8 gave (padding is
    masked). A group-norm feature encoder (wav2vec2-base) normalises over the padded samples too, so its outputs
    depend on the batch a clip is padded in."""
    model_dir = save_wav2vec2(tmp_path / "w2v", do_stable_layer_norm=True)
    out = tmp_path / "run"
    flags = ["--no-progress", "--batch-size", "4"]
    argv = ["train", "--data", tones_dir, "--model", model_dir, "--method", method, "--epochs", "2"]
    assert main([str(a) for a in [*argv, "--lr", "1e-2", "--output-dir", out, *flags]]) == 0
    assert "audio preprocessing: no preprocessor_config.json" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["task"]["media"] == "audio"
    assert "16000 Hz" in results["task"]["preprocessing"] and results["steps"] == 8
    info = json.loads((out / "best" / "training.json").read_text())
    assert info["media"] == "audio" and info["head"]["pooling"] == "mean"  # the audio default
    report = tmp_path / "eval.json"
    assert main([str(a) for a in ["evaluate", out, "--data", tones_dir, "--output", report, *flags]]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["accuracy"] == pytest.approx(results["dev_metrics"]["accuracy"])
    assert metrics["loss"] == pytest.approx(results["dev_metrics"]["loss"], abs=1e-5)


@pytest.mark.parametrize("method", ["adapter:pfeiffer", "adapter:lora"])
def test_only_the_adapter_and_head_train_and_padding_does_not_change_logits(method, tones_dir, tmp_path):
    """The layer-norm wav2vec2 (the large checkpoints' feature encoder) sees a padded clip exactly as it sees it
    alone once padded frames are masked: the attention skips them and mean pooling averages the real ones."""
    task = load_task(tones_dir)
    model = build("wav2vec2", do_stable_layer_norm=True)
    model.config.name_or_path = str(tmp_path / "nowhere")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train(model, task, method=method, epochs=2, learning_rate=1e-2, batch_size=4, progress=False)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())  # the base is frozen
    added = [name for name in after if name not in before]
    assert any(name.startswith("_adapterhub.adapters.task.") for name in added)
    processor = load_media_processor(None, model.config, "audio")
    dev = media_datasets(task, processor)[1]
    lengths = [dev[i]["input_values"].shape[0] for i in range(len(dev))]
    short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
    assert lengths[short] < lengths[long] - 100
    model.eval()
    with torch.no_grad():
        alone = model(**collate_media([dev[short]])).logits  # (1, 2)
        padded_batch = collate_media([dev[short], dev[long]])
        padded = model(**padded_batch).logits[:1]
        unmasked = model(input_values=padded_batch["input_values"]).logits[:1]  # padding seen as samples
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-3)


def test_the_saved_adapter_reloads_with_identical_outputs(tones_dir, tmp_path):
    model_dir = save_wav2vec2(tmp_path / "w2v")
    task = load_task(tones_dir)
    model = build("wav2vec2")
    model.config.name_or_path = str(model_dir)
    train(
        model,
        task,
        method="adapter:lora",
        epochs=1,
        batch_size=4,
        progress=False,
        output_dir=str(tmp_path / "r"),
    )
    reloaded, processor, info = load_trained(tmp_path / "r" / "best")
    assert info["media"] == "audio" and info["head"]["pooling"] == "mean"
    batch = collate_media([media_datasets(task, processor)[1][i] for i in range(len(task.dev))])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-6)


def test_the_model_folders_feature_extractor_is_used(tones_dir, tmp_path):
    import transformers

    model_dir = save_wav2vec2(tmp_path / "w2v")
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True).save_pretrained(
        model_dir
    )
    task = load_task(tones_dir)
    processor = load_media_processor(model_dir, build("wav2vec2").config, "audio")
    assert (
        processor.description.startswith("Wav2Vec2FeatureExtractor from")
        and "16000 Hz" in processor.description
    )
    values = processor(task.dev[0].media)
    with wave.open(task.dev[0].audio, "rb") as reader:
        raw = struct.unpack(f"<{reader.getnframes()}h", reader.readframes(reader.getnframes()))
    torch.testing.assert_close(values, torch.tensor(raw, dtype=torch.float32) / 32768.0)  # do_normalize=False


def test_another_sample_rate_is_resampled_to_the_processors(tones_dir):
    """An 8 kHz clip becomes ceil(N · 16000 / 8000) samples at 16 kHz (adapterhub.data.resample), then the
    fallback's per-row normalisation."""
    from adapterhub.data.media import read_audio
    from adapterhub.data.resample import resample

    write_wav(tones_dir / "wav" / "0.wav", tone(300, 400, random.Random(1)), rate=8000)
    task = load_task(tones_dir)
    media = next(e.media for e in (*task.train, *task.dev) if e.audio.endswith("/wav/0.wav"))
    processor = load_media_processor(None, build("wav2vec2").config, "audio")
    values = processor(media)
    samples, rate = read_audio(media)
    assert rate == 8000 and values.shape == (2 * len(samples),)
    expected = resample(torch.from_numpy(samples.copy()), 8000, 16000)
    expected = (expected - expected.mean()) / torch.sqrt(expected.var(unbiased=False) + 1e-7)
    torch.testing.assert_close(values, expected)


def test_parallel_branch_heads_pool_over_the_real_frames_too():
    """Under ``Parallel`` each branch's head gets the frame mask: branch ``a`` gives what ``a`` alone gives, and
    the padded third row (300 real samples of 400) what that clip gives unpadded."""
    import adapterhub
    from adapterhub import Parallel
    from method_checks import perturb
    from tiny_models import make_audio_inputs

    model = adapterhub.init(build("wav2vec2", do_stable_layer_norm=True))
    for i, name in enumerate("ab"):
        model.add_adapter(name, config="pfeiffer")
        perturb(model._adapterhub.adapters[name], seed=3 + i)
        model.add_classification_head(name, num_labels=3, pooling="mean")
    inputs = make_audio_inputs()
    with torch.no_grad():
        with model.adapter_setup(Parallel("a", "b")):
            both = model(**inputs).logits  # (branches, batch, 3)
        for i, name in enumerate("ab"):
            model.active_head = name
            with model.adapter_setup(name):
                torch.testing.assert_close(both[i], model(**inputs).logits, rtol=0, atol=1e-6)
                alone = model(input_values=inputs["input_values"][2:, :300]).logits  # (1, 3)
            torch.testing.assert_close(both[i, 2:], alone, rtol=0, atol=1e-5)


def test_transcript_rows_are_a_ctc_task(tones_dir):
    """``{"audio", "text"}`` rows (speech recognition) load as a ``ctc`` task (tests/training/test_ctc_cli.py),
    not as text rows missing a label."""
    rows = [{"audio": f"wav/{i}.wav", "text": " hi  there "} for i in range(4)]
    for split in ("train", "dev"):
        (tones_dir / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
        )
    task = load_task(tones_dir)
    assert task.kind == "ctc" and task.media == "audio" and task.labels == ()
    assert [e.text for e in task.train] == ["hi there"] * 4 and task.train[0].audio.endswith("0.wav")


def test_flac_rows_train_through_the_cli_and_evaluate_as_their_wavs(tones_dir, tmp_path, capsys):
    """The tone rows re-encoded as FLAC (lossless, the same 16-bit ints, read by soundfile) train a bottleneck
    adapter through ``adapterhub train``; ``evaluate`` on the FLAC rows and on the original WAV rows gives the
    same metrics, as the decoded samples are the same."""
    soundfile = pytest.importorskip("soundfile")
    flac_dir = tmp_path / "tones_flac"
    (flac_dir / "flac").mkdir(parents=True)
    for split in ("train", "dev"):
        rows = [json.loads(line) for line in (tones_dir / f"{split}.jsonl").read_text().splitlines()]
        for row in rows:
            with wave.open(str(tones_dir / row["audio"]), "rb") as reader:
                raw = reader.readframes(reader.getnframes())
            name = Path(row["audio"]).with_suffix(".flac").name
            ints = torch.frombuffer(bytearray(raw), dtype=torch.int16).numpy()
            soundfile.write(flac_dir / "flac" / name, ints, RATE, subtype="PCM_16")
            row["audio"] = f"flac/{name}"
        (flac_dir / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
        )
    model_dir = save_wav2vec2(tmp_path / "w2v", do_stable_layer_norm=True)
    out = tmp_path / "run"
    flags = ["--no-progress", "--batch-size", "4"]
    argv = [
        "train",
        "--data",
        flac_dir,
        "--model",
        model_dir,
        "--method",
        "adapter:pfeiffer",
        "--epochs",
        "1",
    ]
    assert main([str(a) for a in [*argv, "--lr", "1e-2", "--output-dir", out, *flags]]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["task"]["media"] == "audio" and results["steps"] == 4
    metrics = {}
    for name, data in (("flac", flac_dir), ("wav", tones_dir)):
        report = tmp_path / f"{name}.json"
        assert main([str(a) for a in ["evaluate", out, "--data", data, "--output", report, *flags]]) == 0
        metrics[name] = json.loads(report.read_text())["metrics"]
    assert metrics["flac"]["loss"] == pytest.approx(results["dev_metrics"]["loss"], abs=1e-5)
    assert metrics["flac"] == metrics["wav"]
