"""``adapterhub train / evaluate / compare / ablate`` end to end on a tiny saved model and tiny JSONL data."""

from __future__ import annotations

import json

import pytest

from adapterhub.cli import main

TINY_FLAGS = ["--batch-size", "8", "--max-length", "16", "--no-progress", "--pooling", "mean"]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def trained(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        sentiment_dir,
        "--model",
        tiny_model_dir,
        "--method",
        "adapter:pfeiffer[reduction_factor=2]",
        "--epochs",
        "2",
        "--lr",
        "3e-2",
        "--seed",
        "1",
        "--output-dir",
        out,
        *TINY_FLAGS,
    ]
    code, stdout, stderr = run(argv, capsys)
    assert code == 0, stderr
    assert "dev accuracy" in stdout and "results.json" in stdout
    return out


def test_train_writes_results_and_best(trained):
    results = json.loads((trained / "results.json").read_text())
    assert results["status"] == "completed" and results["method"] == "adapter:pfeiffer[reduction_factor=2]"
    assert results["config"]["learning_rate"] == 3e-2 and results["config"]["seed"] == 1
    assert (trained / "best" / "adapter").is_dir() and (trained / "best" / "training.json").is_file()


def test_evaluate_reproduces_the_best_dev_metric(trained, tiny_model_dir, sentiment_dir, tmp_path, capsys):
    report = tmp_path / "eval.json"
    code, stdout, stderr = run(
        [
            "evaluate",
            trained,
            "--data",
            sentiment_dir,
            "--model",
            tiny_model_dir,
            "--output",
            report,
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, stderr
    metrics = json.loads(report.read_text())["metrics"]
    results = json.loads((trained / "results.json").read_text())
    assert metrics["accuracy"] == pytest.approx(results["metric"]["value"])
    # a plain adapter directory (with its head) works too
    code, stdout, stderr = run(
        [
            "evaluate",
            trained / "best" / "adapter",
            "--data",
            sentiment_dir,
            "--model",
            tiny_model_dir,
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, stderr
    assert f"accuracy {results['metric']['value']:.4f}" in stdout


def test_ablate_writes_numbers_and_a_heatmap(trained, tiny_model_dir, sentiment_dir, tmp_path, capsys):
    out = tmp_path / "ablation"
    code, _stdout, stderr = run(
        [
            "ablate",
            trained,
            "--data",
            sentiment_dir,
            "--model",
            tiny_model_dir,
            "--output-dir",
            out,
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, stderr
    data = json.loads((out / "ablation.json").read_text())
    assert data["num_layers"] == 2 and data["metric"] == "accuracy"
    matrix = data["matrix"]
    assert matrix[1][0] is None and all(matrix[i][j] is not None for i in range(2) for j in range(i, 2))
    results = json.loads((trained / "results.json").read_text())
    assert data["baseline"] == pytest.approx(results["metric"]["value"])
    assert matrix[0][1] == pytest.approx(data["no_adapter"])  # removing every layer = no adapter
    from PIL import Image

    with Image.open(out / "ablation.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 200


def test_compare_tabulates_every_method(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    out = tmp_path / "compare"
    code, stdout, stderr = run(
        [
            "compare",
            "--data",
            sentiment_dir,
            "--model",
            tiny_model_dir,
            "--methods",
            "head",
            "full@1e-3",
            "adapter:pfeiffer[reduction_factor=2]",
            "--max-steps",
            "4",
            "--output-dir",
            out,
            *TINY_FLAGS,
        ],
        capsys,
    )
    assert code == 0, stderr
    table = json.loads((out / "compare.json").read_text())
    rows = {row["method"]: row for row in table["rows"]}
    assert list(rows) == ["head", "full", "adapter:pfeiffer[reduction_factor=2]"]
    assert rows["full"]["learning_rate"] == 1e-3 and rows["head"]["learning_rate"] == 1e-3
    assert (
        rows["full"]["percent_of_base"]
        > 100
        > rows["adapter:pfeiffer[reduction_factor=2]"]["percent_of_base"]
    )
    for row in rows.values():
        assert row["trainable_parameters"] > 0 and row["train_examples_per_second"] > 0
        assert row["peak_memory_bytes"] > 0 and row["saved_size_bytes"] > 0
        assert row["inference_vs_bare"] > 0
    assert rows["full"]["speed_vs_full"] == pytest.approx(1.0)
    markdown = (out / "compare.md").read_text()
    assert "| method |" in markdown and "trainable params" in markdown and markdown in stdout
    assert "inference vs bare" in markdown


def test_compare_takes_the_new_presets_by_name(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    """compare trains and tabulates methods landed later by their preset names (every one of them trains in
    tests/training/test_methods.py)."""
    methods = ["adapter:vera", "adapter:loreft", "adapter:lokr"]
    out = tmp_path / "compare"
    argv = ["compare", "--data", sentiment_dir, "--model", tiny_model_dir, "--methods", *methods]
    code, _, stderr = run([*argv, "--max-steps", "2", "--output-dir", out, *TINY_FLAGS], capsys)
    assert code == 0, stderr
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [row["method"] for row in rows] == methods
    assert all(row["trainable_parameters"] > 0 and row["saved_size_bytes"] > 0 for row in rows)


def test_compare_keeps_each_learning_rate_of_one_method_apart(
    tmp_path, tiny_model_dir, sentiment_dir, capsys
):
    out = tmp_path / "rates"
    argv = ["compare", "--data", sentiment_dir, "--model", tiny_model_dir, "--max-steps", "2"]
    argv += ["--methods", "adapter:lora@1e-3", "adapter:lora@5e-3", "--inference-examples", "0"]
    code, _, stderr = run([*argv, "--output-dir", out, *TINY_FLAGS], capsys)
    assert code == 0, stderr
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [row["learning_rate"] for row in rows] == [1e-3, 5e-3]
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["adapter_lora_lr0.001", "adapter_lora_lr0.005"]
    for folder, lr in zip(folders, [1e-3, 5e-3], strict=True):  # each run's own results and weights
        assert json.loads((folder / "results.json").read_text())["config"]["learning_rate"] == lr
        assert (folder / "best").is_dir()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--data", "{data}", "--method", "adaptr", "--output-dir", "{tmp}"],
            "Unknown method 'adaptr'",
        ),
        (["train", "--data", "{data}", "--method", "topk:zero", "--output-dir", "{tmp}"], "topk needs"),
        (["train", "--data", "{tmp}/missing.jsonl", "--output-dir", "{tmp}"], "does not exist"),
        (
            ["train", "--data", "{data}", "--model", "{tmp}/nope/", "--output-dir", "{tmp}"],
            "no such directory",
        ),
        (["evaluate", "{tmp}/none", "--data", "{data}"], "is not a directory"),
        (["compare", "--data", "{data}", "--methods", "full@fast", "--output-dir", "{tmp}"], "learning rate"),
        (["ablate", "{tmp}", "--data", "{data}"], "holds no training.json"),
        (
            ["compare", "--data", "{data}", "--methods", "full", "full@2e-5", "--output-dir", "{tmp}"],
            "listed twice",
        ),
    ],
)
def test_user_mistakes_print_one_line(argv, message, tmp_path, sentiment_dir, capsys):
    argv = [a.format(data=sentiment_dir, tmp=tmp_path) for a in argv]
    code, _stdout, stderr = run(argv, capsys)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_ablate_refuses_a_run_without_adapter(tmp_path, tiny_model_dir, sentiment_dir, capsys):
    out = tmp_path / "head-run"
    code, _, stderr = run(
        [
            "train",
            "--data",
            sentiment_dir,
            "--model",
            tiny_model_dir,
            "--method",
            "head",
            "--max-steps",
            "2",
            "--output-dir",
            out,
            *TINY_FLAGS,
        ],
        capsys,
    )
    assert code == 0, stderr
    code, _, stderr = run(["ablate", out, "--data", sentiment_dir, "--model", tiny_model_dir], capsys)
    assert code == 2 and "needs an adapter method" in stderr


@pytest.mark.parametrize("command", ["train", "evaluate", "compare", "ablate"])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--data" in capsys.readouterr().out


def test_bad_numbers_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "x", "--output-dir", "y", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err
