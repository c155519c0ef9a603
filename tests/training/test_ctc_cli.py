"""Speech recognition through ``adapterhub train`` / ``evaluate`` (``{"audio", "text"}`` rows, kind ``ctc``) on a
tiny random wav2vec2 saved to disk and a synthetic speech set written with the standard library's ``wave``: each
letter is a tone of its own pitch (a space is near-silence), a clip spells its transcript.

Training runs end to end (the vocabulary built from the training transcripts, or the model folder's
``Wav2Vec2CTCTokenizer``; said in results.json and saved with the run), only the adapter and the CTC ``lm_head``
change, the CTC loss falls on a tiny overfit set, ``evaluate`` reproduces WER / CER computed here from the
tokenizer's own ``batch_decode`` and an independent edit distance, and bad rows fail naming their file and line.
"""

from __future__ import annotations

import functools
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
from adapterhub.errors import ConfigError
from adapterhub.training.ctc import build_vocabulary, ctc_tokenizer
from adapterhub.training.ctc_metrics import ctc_collapse, edit_distance, error_rates
from adapterhub.training.loop import train
from adapterhub.training.modeling import load_trained
from tiny_models import build

RATE = 16_000
SEGMENT = 480  # samples per character (30 ms)
LETTERS = "abcd"
WORDS = ["ab", "cd", "ba", "dc", "a cb", "bd a", "cab", "dd"]  # "dd": a repeat (needs a blank between)
TINY = {"do_stable_layer_norm": True, "layerdrop": 0.0, "mask_time_prob": 0.0}


def write_wav(path: Path, samples: list[int]) -> None:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(struct.pack(f"<{len(samples)}h", *samples))


def spoken(text: str, rng: random.Random) -> list[int]:
    """One 30 ms segment per character: a tone at 400 + 600 Hz per letter index, near-silence for a space."""
    samples = []
    for char in text:
        frequency = 0 if char == " " else 400 + 600 * LETTERS.index(char)
        amplitude = 0 if char == " " else 9000
        samples += [
            int(amplitude * math.sin(2 * math.pi * frequency * t / RATE) + rng.randint(-300, 300))
            for t in range(SEGMENT)
        ]
    return samples


def write_rows(folder: Path, split: str, rows: list[dict]) -> None:
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def speech_dir(tmp_path):
    """8 clips; train and dev hold the same ones (an overfit set)."""
    folder = tmp_path / "speech"
    (folder / "wav").mkdir(parents=True)
    rng = random.Random(0)
    rows = []
    for i, text in enumerate(WORDS):
        write_wav(folder / "wav" / f"{i}.wav", spoken(text, rng))
        rows.append({"audio": f"wav/{i}.wav", "text": text})
    write_rows(folder, "train", rows)
    write_rows(folder, "dev", rows)
    return folder


def save_model(folder: Path, vocab_size: int = 12, head_std: float | None = None) -> Path:
    """A tiny random Wav2Vec2ForCTC; ``head_std``: its ``lm_head`` drawn at the scale of a fine-tuned one (the
    random init's std 0.02 keeps the logits near uniform, and CTC then sits on its all-blank plateau for far
    longer than a test can train)."""
    model = build("wav2vec2", "ctc", vocab_size=vocab_size, **TINY)
    if head_std is not None:
        torch.manual_seed(1)
        torch.nn.init.normal_(model.lm_head.weight, std=head_std)
    model.save_pretrained(folder)
    return folder


def run(argv: list) -> int:
    return main([str(a) for a in argv])


TRAIN_FLAGS = ["--method", "adapter:pfeiffer", "--lr", "3e-2", "--batch-size", "8", "--no-progress"]


# ------------------------------------------------------------------------------------------- metrics, decoding


@functools.cache
def _distance(a: tuple, b: tuple) -> int:  # the textbook recursion, independent of edit_distance's one-row DP
    if not a or not b:
        return len(a) + len(b)
    return min(_distance(a[1:], b) + 1, _distance(a, b[1:]) + 1, _distance(a[1:], b[1:]) + (a[0] != b[0]))


def reference_rates(references: list[str], predictions: list[str]) -> tuple[float, float]:
    words = sum(_distance(tuple(r.split()), tuple(p.split())) for r, p in zip(references, predictions))
    chars = sum(_distance(tuple(r), tuple(p)) for r, p in zip(references, predictions))
    return words / sum(len(r.split()) for r in references), chars / sum(len(r) for r in references)


def test_error_rates_and_collapse_on_known_cases():
    assert edit_distance("kitten", "sitting") == 3
    rates = error_rates(["a b c", "d e"], ["a x c d", ""])  # words: 1 sub + 1 ins, 2 del -> 4 / 5
    assert rates["wer"] == pytest.approx(4 / 5)
    assert rates["cer"] == pytest.approx((3 + 3) / 8)  # "a b c" -> "a x c d": 1 sub, 2 ins; "d e": 3 del
    assert reference_rates(["a b c", "d e"], ["a x c d", ""]) == pytest.approx((rates["wer"], rates["cer"]))
    assert ctc_collapse([0, 3, 3, 0, 3, 4, 4, 0, 0], blank=0) == [3, 3, 4]


def test_greedy_decoding_equals_the_tokenizers_batch_decode():
    tokenizer, record = ctc_tokenizer(None, WORDS)
    assert record["source"] == "built" and record["tokens"][:3] == ["<pad>", "<unk>", "|"]
    assert tokenizer.get_vocab() == build_vocabulary(WORDS)
    from adapterhub.training.ctc import CtcProcessor
    from adapterhub.training.media_batches import MediaProcessor

    processor = CtcProcessor(MediaProcessor("audio", "test"), tokenizer, record)
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(
        0, len(tokenizer), (20, 30), generator=generator
    )  # (rows, frames), blank-heavy below
    frames[frames > 4] = 0
    expected = tokenizer.batch_decode(frames.tolist())
    assert [processor.decode(row) for row in frames.tolist()] == expected
    assert any(" " in text for text in expected) and any(len(text) > 3 for text in expected)


# ------------------------------------------------------------------------------------------------- end to end


def test_train_and_evaluate_through_the_cli(speech_dir, tmp_path, capsys):
    model_dir = save_model(
        tmp_path / "w2v", vocab_size=3 + len(LETTERS), head_std=0.5
    )  # the built vocabulary
    out = tmp_path / "run"
    argv = ["train", "--data", speech_dir, "--model", model_dir, "--max-steps", "80", "--eval-every", "40"]
    lora = [
        "--method",
        "adapter:lora[r=8]",
        "--lr",
        "1e-2",
        "--warmup-ratio",
        "0",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    assert run([*argv, *lora, "--output-dir", out]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["task"]["kind"] == "ctc"
    assert results["metric"]["name"] == "wer" and results["metric"]["greater_is_better"] is False
    vocabulary = results["speech"]["vocabulary"]
    assert vocabulary["source"] == "built" and vocabulary["size"] == 3 + len(LETTERS)
    samples = results["speech"]["samples"]
    assert len(samples) == 5 and [s["reference"] for s in samples] == WORDS[:5]
    losses = [row["train_loss"] for row in results["history"]]
    assert losses[-1] < 0.5 * losses[0], losses  # the CTC loss falls on the overfit set
    assert results["dev_metrics"]["cer"] < 1.0, results["history"]  # past the all-blank start
    info = json.loads((out / "best" / "training.json").read_text())
    assert info["kind"] == "ctc" and info["vocabulary"]["tokens"][3:] == sorted(LETTERS)
    assert (out / "best" / "tokenizer" / "vocab.json").is_file()

    report = tmp_path / "eval.json"
    assert run(["evaluate", out, "--data", speech_dir, "--batch-size", "3", "--output", report]) == 0
    printed = capsys.readouterr().out
    assert "wer " in printed and "cer " in printed
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["wer"] == pytest.approx(results["dev_metrics"]["wer"])
    assert metrics["cer"] == pytest.approx(results["dev_metrics"]["cer"])
    assert metrics["loss"] == pytest.approx(results["dev_metrics"]["loss"], rel=1e-4)  # batches of 3 vs 8

    # the same figures from the reloaded run, one clip at a time, the tokenizer's batch_decode, our own distance
    model, processor, _ = load_trained(out / "best")
    task = load_task(speech_dir)
    predictions = []
    with torch.no_grad():
        for example in task.dev:
            values = processor.audio(example.media)[None]  # (1, samples)
            ids = model(input_values=values).logits.argmax(-1)  # (1, frames)
            predictions += processor.tokenizer.batch_decode(ids.tolist())
    assert any(predictions), predictions
    wer, cer = reference_rates([e.text for e in task.dev], predictions)
    assert metrics["wer"] == pytest.approx(wer) and metrics["cer"] == pytest.approx(cer)
    assert [s["prediction"] for s in json.loads(report.read_text())["samples"]] == predictions[:5]


def test_only_the_adapter_and_the_ctc_head_train(speech_dir, tmp_path):
    task = load_task(speech_dir)
    assert task.kind == "ctc" and task.labels == () and task.dev[4].text == "a cb"
    model = build("wav2vec2", "ctc", vocab_size=7, **TINY)
    model.config.name_or_path = str(tmp_path / "nowhere")  # no folder: the vocabulary is built
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    results = train(model, task, method="adapter:lora", max_steps=5, learning_rate=1e-2, progress=False)
    assert results.speech["vocabulary"]["source"] == "built"
    after = dict(model.named_parameters())
    changed = {name for name, tensor in before.items() if not torch.equal(after[name], tensor)}
    assert changed == {"lm_head.weight", "lm_head.bias"}  # the head; every other base weight is frozen
    assert any(name.startswith("_adapterhub.adapters.task.") for name in after if name not in before)


def test_the_model_folders_tokenizer_is_the_vocabulary(speech_dir, tmp_path):
    import transformers

    model_dir = save_model(tmp_path / "w2v", vocab_size=12)
    vocab = {
        "<pad>": 0,
        "<s>": 1,
        "</s>": 2,
        "<unk>": 3,
        "|": 4,
        **{c: 5 + i for i, c in enumerate("abcdefg")},
    }
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json")).save_pretrained(model_dir)
    out = tmp_path / "run"
    argv = ["train", "--data", speech_dir, "--model", model_dir, "--max-steps", "2", "--output-dir", out]
    assert run([*argv, *TRAIN_FLAGS]) == 0
    vocabulary = json.loads((out / "results.json").read_text())["speech"]["vocabulary"]
    assert vocabulary["source"] == "model" and vocabulary["size"] == 12
    assert vocabulary["from"] == str(model_dir.resolve() / "vocab.json")
    saved = json.loads((out / "best" / "tokenizer" / "vocab.json").read_text())
    assert saved == vocab


def test_a_head_of_another_size_is_made_the_vocabularys(speech_dir, tmp_path):
    from adapterhub.training.ctc import load_ctc_base

    model, processor, _ = load_ctc_base(str(save_model(tmp_path / "w2v", vocab_size=12)), WORDS)
    assert model.lm_head.out_features == len(processor.tokenizer) == 7 and model.config.pad_token_id == 0
    assert model.config.ctc_loss_reduction == "mean" and processor.vocabulary["source"] == "built"


# ---------------------------------------------------------------------------------------------------- errors


def test_a_row_without_text_names_its_line(speech_dir, tmp_path, capsys):
    rows = [json.loads(line) for line in (speech_dir / "train.jsonl").read_text().splitlines()]
    rows[2] = {"audio": rows[2]["audio"], "text": "  "}
    write_rows(speech_dir, "train", rows)
    with pytest.raises(ConfigError, match=r"train.jsonl, line 3: no transcript in column 'text'"):
        load_task(speech_dir)
    rows[2] = {"audio": rows[2]["audio"]}
    write_rows(speech_dir, "train", rows)
    model_dir = save_model(tmp_path / "w2v")
    argv = ["train", "--data", speech_dir, "--model", model_dir, "--output-dir", tmp_path / "run"]
    assert run(argv) == 2
    assert "train.jsonl, line 3: no transcript in column 'text' (got nothing)" in capsys.readouterr().err


def test_a_missing_wav_names_its_line(speech_dir):
    rows = [json.loads(line) for line in (speech_dir / "dev.jsonl").read_text().splitlines()]
    rows[5]["audio"] = "wav/missing.wav"
    write_rows(speech_dir, "dev", rows)
    with pytest.raises(ConfigError, match=r"dev.jsonl, line 6: audio file 'wav/missing.wav' not found"):
        load_task(speech_dir)


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_characters_outside_the_vocabulary_name_the_row(speech_dir, tmp_path, capsys, with_tokenizer):
    """A built vocabulary holds the training transcripts' characters (a dev row with another fails); a model
    folder's tokenizer holds its own (a training row with another fails)."""
    import transformers

    model_dir = save_model(tmp_path / "w2v", vocab_size=8)
    split, line = ("train", 4) if with_tokenizer else ("dev", 2)
    if with_tokenizer:
        vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "a": 5, "b": 6, "c": 7}
        (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json")).save_pretrained(model_dir)
    rows = [json.loads(row) for row in (speech_dir / f"{split}.jsonl").read_text().splitlines()]
    if with_tokenizer:  # the tokenizer has no 'd': every other row without one
        rows = [{**row, "text": row["text"].replace("d", "a")} for row in rows]
    rows[line - 1]["text"] = "ad" if with_tokenizer else "aé"  # a dev character the training rows lack
    write_rows(speech_dir, split, rows)
    argv = ["train", "--data", speech_dir, "--model", model_dir, "--output-dir", tmp_path / "run"]
    assert run([*argv, *TRAIN_FLAGS, "--max-steps", "1"]) == 2
    error = capsys.readouterr().err
    bad = "'d'" if with_tokenizer else "'é'"
    assert (
        f"{split}.jsonl, line {line}: the transcript" in error and f"outside the vocabulary ({bad}" in error
    )


def _long_first_transcript(speech_dir):
    """The training rows, the first one's transcript 140 characters long."""
    rows = [json.loads(line) for line in (speech_dir / "train.jsonl").read_text().splitlines()]
    rows[0]["text"] = "ab" * 70
    return rows


def _check_refused_as_too_short(speech_dir, rows, tmp_path, capsys) -> None:
    """Training on ``rows`` exits 2 naming line 1's clip (118 frames) as too short for its 140 characters."""
    write_rows(speech_dir, "train", rows)
    argv = [
        "train",
        "--data",
        speech_dir,
        "--model",
        save_model(tmp_path / "w2v"),
        "--output-dir",
        tmp_path / "r",
    ]
    assert run([*argv, *TRAIN_FLAGS, "--max-steps", "1"]) == 2
    error = capsys.readouterr().err
    assert "train.jsonl, line 1: the clip gives 118 frames but its transcript needs at least 140" in error


def test_a_clip_too_short_for_its_transcript_names_its_line(speech_dir, tmp_path, capsys):
    """A 2-letter clip (960 samples: (960 - 8) // 4 + 1 = 239, then (239 - 4) // 2 + 1 = 118 frames of the tiny
    model's two convolutions) cannot carry 140 target characters."""
    rows = _long_first_transcript(speech_dir)
    _check_refused_as_too_short(speech_dir, rows, tmp_path, capsys)


def test_the_length_check_counts_frames_after_resampling(speech_dir, tmp_path, capsys):
    """An 8 kHz clip of 480 samples becomes ceil(480 · 2) = 960 samples at the model's 16 kHz: 118 frames, as the
    16 kHz clip above."""
    rows = _long_first_transcript(speech_dir)
    with wave.open(str(speech_dir / rows[0]["audio"]), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(struct.pack("<480h", *spoken("a", random.Random(0))[:480]))
    _check_refused_as_too_short(speech_dir, rows, tmp_path, capsys)
