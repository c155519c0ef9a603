"""The CLI on generation tasks with a saved tiny random Llama and an offline ChatML tokenizer: ``compare --kind
generation`` (one row per method: answer accuracy, dev loss per response token, tokens/s, trainable parameters)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from adapterhub.cli import main
from tiny_chat import chat_tokenizer
from tiny_models import build

WORDS = ["classify", "the", "movie", "good", "great", "bad", "awful", "plot", "positive", "negative"]


def write_generation_folder(root: Path, train_rows: int = 12, dev_rows: int = 4) -> Path:
    rng = random.Random(3)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_rows), ("dev", dev_rows)):
        lines = []
        for i in range(count):
            positive = i % 2 == 0
            word = rng.choice(["good", "great"] if positive else ["bad", "awful"])
            messages = [
                {"role": "user", "content": f"classify the {word} movie"},
                {"role": "assistant", "content": "positive" if positive else "negative"},
            ]
            lines.append(json.dumps({"messages": messages}))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "task.json").write_text(json.dumps({"kind": "generation", "answers": ["negative", "positive"]}))
    return root


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama-chat")
    build("llama", "causal_lm").save_pretrained(path)
    chat_tokenizer(WORDS).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: Any) -> Path:
    return write_generation_folder(tmp_path_factory.mktemp("chat-data"))


FLAGS = ["--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--no-progress", "--lr", "1e-2"]


def run(argv: list[Any], capsys: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_generation_tabulates_every_method(
    tmp_path: Path, llama_dir: Path, data_dir: Path, capsys: Any
) -> None:
    out = tmp_path / "cmp"
    methods = ["adapter:lora", "adapter:ia3", "adapter:prompt_tuning", "adapter:lora@3e-2"]
    argv = ["compare", "--data", data_dir, "--model", llama_dir, "--methods", *methods, "--output-dir", out]
    code, stdout, stderr = run([*argv, *FLAGS], capsys)
    assert code == 0, stderr
    assert "not measured on generation tasks" in stderr
    summary = json.loads((out / "compare.json").read_text())
    assert summary["task"]["kind"] == "generation"
    assert summary["settings"]["loss_chunk_size"] == 512 and summary["settings"]["quantize"] is None
    zero = summary["zero_shot"]
    assert zero["dev_rows"] == 4 and zero["majority_rate"] == pytest.approx(0.5)
    rows = summary["rows"]
    assert [r["method"] for r in rows] == [
        "adapter:lora",
        "adapter:ia3",
        "adapter:prompt_tuning",
        "adapter:lora",
    ]
    assert [r["learning_rate"] for r in rows] == [1e-2, 1e-2, 1e-2, 3e-2]
    for row in rows:
        run_dir = json.loads((out / _folder(row, rows) / "results.json").read_text())
        gen = run_dir["generation"]
        assert row["accuracy"] == gen["accuracy"] and row["loss"] == gen["loss"] > 0
        assert row["allowed_fraction"] == gen["allowed_fraction"]
        assert row["train_tokens_per_second"] > row["train_loss_tokens_per_second"] > 0
        assert row["trainable_parameters"] == run_dir["trainable_parameters"] > 0
        assert row["status"] == "completed"
    # LoRA, (IA)^3 and prompt tuning train different numbers of weights; the two LoRA runs the same
    counts = [r["trainable_parameters"] for r in rows]
    assert len(set(counts[:3])) == 3 and counts[0] == counts[3]
    assert rows[2]["packing"] is False and rows[0]["packing"] is True  # prompt tuning trains unpacked
    markdown = (out / "compare.md").read_text()
    assert "answer accuracy" in markdown and "dev loss/token" in markdown and "train tokens/s" in markdown
    assert "base model without adapter" in markdown and "majority rate 0.5000" in markdown
    assert markdown in stdout


def _folder(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    slug = row["method"].replace(":", "_")
    if sum(r["method"] == row["method"] for r in rows) > 1:
        slug += f"_lr{row['learning_rate']:g}"
    return slug


def test_compare_generation_refuses_the_head_method_before_any_run(
    tmp_path: Path, llama_dir: Path, data_dir: Path, capsys: Any
) -> None:
    argv = ["compare", "--data", data_dir, "--model", llama_dir, "--output-dir", tmp_path / "c", *FLAGS]
    code, _, stderr = run([*argv, "--methods", "head", "adapter:lora"], capsys)
    assert code == 2 and "no task head" in stderr and "adapter:lora" in stderr
    assert not (tmp_path / "c").exists()  # refused before the first run


def test_compare_help_names_the_generation_defaults(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "generation tasks: adapter:lora adapter:ia3" in " ".join(capsys.readouterr().out.split())


def test_evaluate_a_bare_generation_adapter_folder(
    tmp_path: Path, llama_dir: Path, data_dir: Path, capsys: Any
) -> None:
    """best/adapter of a generation run (no head, no training.json) evaluates on the model its config names
    (or --model) with the figures of the run; a folder naming a model that is not here says to pass --model."""
    import shutil

    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        data_dir,
        "--model",
        llama_dir,
        "--method",
        "adapter:lora",
        "--output-dir",
        out,
    ]
    code, _, stderr = run([*argv, *FLAGS], capsys)
    assert code == 0, stderr
    gen = json.loads((out / "results.json").read_text())["generation"]
    bare = tmp_path / "bare"
    shutil.copytree(out / "best" / "adapter", bare)
    assert not (bare / "training.json").exists()
    flags = ["--data", data_dir, "--no-progress", "--batch-size", "4", "--max-length", "32"]
    code, stdout, stderr = run(["evaluate", bare, *flags, "--output", tmp_path / "e.json"], capsys)
    assert code == 0, stderr
    assert f"base model: {llama_dir}" in stderr and "accuracy" in stdout
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(gen["accuracy"])
    assert report["metrics"]["loss"] == pytest.approx(gen["loss"], rel=1e-5)

    config = json.loads((bare / "adapter_config.json").read_text())
    (bare / "adapter_config.json").write_text(json.dumps({**config, "model_name": str(tmp_path / "gone")}))
    code, _, stderr = run(["evaluate", bare, *flags], capsys)
    assert code == 2 and "which is not here; pass the model with --model" in stderr
    code, stdout, stderr = run(
        ["evaluate", bare, *flags, "--model", llama_dir, "--output", tmp_path / "f.json"], capsys
    )
    assert code == 0, stderr
    assert json.loads((tmp_path / "f.json").read_text())["metrics"] == report["metrics"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = run(["evaluate", empty, *flags], capsys)
    assert code == 2 and "neither a run (training.json) nor an adapter" in stderr
