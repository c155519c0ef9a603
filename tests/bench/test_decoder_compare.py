"""The pure side of bench/decoder/compare_peft_trl.py on synthetic records: time to a common dev loss, ratios, the
markdown page, and the worker's clock and weight counting on a tiny Llama (no SmolLM2, no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transformers

BENCH = Path(__file__).resolve().parents[2] / "bench" / "decoder"
sys.path.insert(0, str(BENCH))

import compare_peft_trl  # noqa: E402
import compare_report as report  # noqa: E402
import compare_worker as worker  # noqa: E402


def points(*pairs: tuple[float, float]) -> list[dict[str, float]]:
    return [{"step": 3 * (i + 1), "train_seconds": s, "loss": loss} for i, (s, loss) in enumerate(pairs)]


def test_time_to_loss_interpolates_between_checkpoints() -> None:
    checkpoints = points((10.0, 1.0), (20.0, 0.6), (30.0, 0.4))
    # 0.8 lies halfway between 1.0 (at 10 s) and 0.6 (at 20 s)
    assert report.time_to_loss(checkpoints, 0.8) == pytest.approx(15.0)
    assert report.time_to_loss(checkpoints, 0.6) == pytest.approx(20.0)
    assert report.time_to_loss(checkpoints, 0.3) is None
    # the first checkpoint already below: from the base model's loss at 0 s, or its own time without one
    assert report.time_to_loss(checkpoints, 1.5, start_loss=2.0) == pytest.approx(5.0)
    assert report.time_to_loss(checkpoints, 1.5) == pytest.approx(10.0)


def test_time_to_loss_takes_the_first_crossing() -> None:
    checkpoints = points((10.0, 0.5), (20.0, 0.9), (30.0, 0.45))
    assert report.time_to_loss(checkpoints, 0.5, start_loss=1.0) == pytest.approx(10.0)


def record(name: str, seconds: float, final: float, tps: float, **extra: float) -> dict:
    checkpoints = points((seconds / 2, (final + 2.0) / 2), (seconds, final))
    return {
        "run": name,
        "checkpoints": checkpoints,
        "final_loss": final,
        "start_loss": 2.0,
        "train_seconds": seconds,
        "tokens_per_second": tps,
        "steps": 6,
        **extra,
    }


def synthetic() -> dict[str, dict]:
    return {
        "a_ours": record("a_ours", 40.0, 0.30, 300.0, accuracy=0.80, peak_train_rss_bytes=900 * 2**20),
        "b_ours_packed": record(
            "b_ours_packed", 20.0, 0.28, 600.0, accuracy=0.82, peak_train_rss_bytes=800 * 2**20
        ),
        "c_trl": record("c_trl", 60.0, 0.50, 200.0, accuracy=0.70, peak_train_rss_bytes=1600 * 2**20),
        "e_ours_qlora": record("e_ours_qlora", 30.0, 0.31, 400.0, base_weight_bytes=150),
    }


def test_target_is_the_worst_final_loss_of_the_compared_runs() -> None:
    records = synthetic()
    target = report.add_time_to_target(records)
    assert target == pytest.approx(0.50)  # c_trl's; e_ours_qlora is not among runs a-d
    assert records["c_trl"]["time_to_target"] == pytest.approx(60.0)
    # b: start 2.0 at 0 s, 1.14 at 10 s, 0.28 at 20 s -> 0.5 reached at 10 + 10 * (1.14 - 0.5) / 0.86
    assert records["b_ours_packed"]["time_to_target"] == pytest.approx(10 + 10 * 0.64 / 0.86)
    assert all(r["loss_target"] == target for r in records.values())
    assert report.loss_target({}) is None


def test_time_to_baseline_is_the_time_to_trls_final_loss() -> None:
    records = synthetic()
    report.add_time_to_target(records)
    # c ends at 0.50 (its own last checkpoint); a: 1.15 at 20 s, 0.30 at 40 s -> 20 + 20 * 0.65 / 0.85
    assert records["c_trl"]["time_to_baseline"] == pytest.approx(60.0)
    assert records["a_ours"]["time_to_baseline"] == pytest.approx(20 + 20 * 0.65 / 0.85)
    out = report.ratios(records)
    speedup = out["ours packed vs trl defaults: speed-up to trl's final dev loss"]
    assert speedup == pytest.approx(60.0 / records["b_ours_packed"]["time_to_baseline"])
    worse = {name: dict(r) for name, r in records.items()}
    worse["a_ours"]["checkpoints"] = points((20.0, 1.2), (40.0, 0.9))  # never reaches 0.50
    report.add_time_to_target(worse)
    assert worse["a_ours"]["time_to_baseline"] is None
    assert "ours unpacked vs trl defaults: speed-up to trl's final dev loss" not in report.ratios(worse)
    del worse["c_trl"]
    report.add_time_to_target(worse)
    assert all(r["time_to_baseline"] is None for r in worse.values())


def test_ratios_say_better_above_one_and_skip_missing_runs() -> None:
    records = synthetic()
    report.add_time_to_target(records)
    out = report.ratios(records)
    speedup = out["ours packed vs trl defaults: speed-up to the same dev loss"]
    assert speedup == pytest.approx(60.0 / records["b_ours_packed"]["time_to_target"])
    assert out["ours packed / trl defaults: train tokens/s"] == pytest.approx(3.0)
    assert out["ours packed / trl defaults: peak training RSS"] == pytest.approx(0.5)
    assert out["ours packed - trl defaults: answer accuracy"] == pytest.approx(0.12)
    assert not any("d_trl" in name or "trl packed" in name for name in out)  # d is absent
    assert not any("QLoRA / peft" in name for name in out)  # f is absent


def test_markdown_holds_the_command_a_row_per_run_and_the_ratios() -> None:
    records = synthetic()
    report.add_time_to_target(records)
    page = report.markdown(
        "python bench/decoder/compare_peft_trl.py --train-rows 96", {"epochs": 1}, records, ["a note"]
    )
    assert "```\npython bench/decoder/compare_peft_trl.py --train-rows 96\n```" in page
    rows = [line for line in page.splitlines() if line.startswith("| (")]
    assert [row.split(" | ")[0] for row in rows] == ["| (a) ours, unpacked", "| (b) ours, packed",
                                                     "| (c) peft + trl SFTTrainer, defaults",
                                                     "| (e) ours QLoRA NF4, packed"]  # fmt: skip
    assert "| 600.0 |" in rows[1] and "| 0.820 |" in rows[1] and "| 800 |" in rows[1]
    assert rows[3].endswith("| 0 |")  # 150 bytes of base weights in MiB
    assert "- ours packed / trl defaults: train tokens/s: **3.00x**" in page
    assert "answer accuracy: **+0.120**" in page
    assert "- a note" in page and "0.5000" in page


def test_clock_checkpoints_every_n_updates_and_leaves_evaluation_out() -> None:
    calls: list[int] = []

    def evaluate(model: object) -> float:
        calls.append(1)
        return 1.0 / len(calls)

    clock = worker.Clock(evaluate, eval_every=2, peak=worker.PeakRss())
    clock.start()
    for step in range(1, 6):
        clock.maybe_checkpoint(step, 5, None)
    clock.maybe_checkpoint(5, 5, None)  # the same step twice: one checkpoint
    assert [c["step"] for c in clock.checkpoints] == [2, 4, 5]
    assert [c["loss"] for c in clock.checkpoints] == [1.0, 0.5, pytest.approx(1 / 3)]
    seconds = [c["train_seconds"] for c in clock.checkpoints]
    assert seconds == sorted(seconds) and clock.seconds() >= seconds[-1]
    assert clock.peak.peak > 0
    last_only = worker.Clock(evaluate, eval_every=None, peak=worker.PeakRss())
    last_only.start()
    for step in range(1, 6):
        last_only.maybe_checkpoint(step, 5, None)
    assert [c["step"] for c in last_only.checkpoints] == [5]
    assert [spec.name for spec in report.RUNS if spec.checkpoints] == list(report.LOSS_RUNS)


def test_process_peak_survives_the_window_resets() -> None:
    peak = worker.PeakRss()
    block = bytearray(64 * 2**20)  # touched: 64 MiB resident
    block[::4096] = b"x" * len(block[::4096])
    high = worker._status("VmRSS")
    del block
    peak.reset()  # the kernel's mark drops to the current resident size
    peak.close_window()
    # the kernel's counters lag by a few pages: 1 MiB of slack against a 64 MiB block
    assert peak.peak < high - 32 * 2**20 and peak.process_peak() >= high - 2**20


def test_base_weight_bytes_counts_tied_weights_once_and_leaves_lora_out() -> None:
    import adapterhub

    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(config)
    expected = sum(
        {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}.values()
    )
    assert worker.base_weight_bytes(model) == expected
    model = adapterhub.init(model)
    model.add_adapter("t", config="lora[r=2,target_modules=all-linear]")
    model.train_adapter("t")
    assert worker.base_weight_bytes(model) == expected
    assert worker.OUR_METHOD.startswith("adapter:lora[")


def test_driver_options(tmp_path: Path) -> None:
    args = compare_peft_trl.parse_args(["--smoke", "--model", str(tmp_path), "--runs", "a_ours,c_trl"])
    settings = compare_peft_trl.settings_of(args)
    assert settings["train_rows"] == compare_peft_trl.SMOKE["train_rows"] and settings["model"] == str(
        tmp_path
    )
    with pytest.raises(SystemExit):
        compare_peft_trl.parse_args(["--runs", "a_ours,z_nothing"])
    assert {spec.name for spec in report.RUNS} >= set(report.LOSS_RUNS) | {report.BASELINE}
