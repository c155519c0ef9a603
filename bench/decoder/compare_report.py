"""The pure side of ``bench/decoder/compare_peft_trl.py``: which runs exist, time to a common dev loss, the ratios
and the markdown table. No torch, no model: these functions take the records the workers write (plain dicts) and
are tested on synthetic records (tests/bench/test_decoder_compare.py).

A run's record (what ``compare_worker.py`` prints as its last JSON line) holds at least ``run``, ``lib``,
``train_seconds``, ``tokens_per_second``, ``peak_train_rss_bytes``, ``process_peak_rss_bytes``,
``base_weight_bytes``, ``final_loss``, ``accuracy`` (or None) and ``checkpoints``: a list of
``{"step", "train_seconds", "loss"}``, the dev loss measured by the one evaluator after ``step`` updates, with
``train_seconds`` the training time up to that update (evaluation time excluded).

**Time to the same dev loss.** The target is the worst (highest) final dev loss among the runs compared
(:data:`LOSS_RUNS` that are present). A run's time to it is the training time at which its dev loss first reaches
the target, linearly interpolated in training seconds between the checkpoint before (loss above the target;
step 0 counts as time 0 with the base model's loss) and the first checkpoint at or below it. The run whose final
loss is the target reaches it at its last checkpoint by definition. A run that never gets there has no time
(``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIB = 2**20


@dataclass(frozen=True)
class RunSpec:
    """One configuration: the library (``ours`` = adapterhub's training step, ``trl`` = peft + trl's
    ``SFTTrainer``), packing, quantisation (``nf4`` or None), activation checkpointing (ours: None or
    ``non-reentrant``; trl: its default, which is on), whether it trains the full schedule (``bounded``:
    only ``--bounded-steps`` updates, for speed and memory figures) and whether its dev loss is measured every
    ``--eval-every`` updates (``checkpoints``: the runs of the time-to-loss column) or only after the last."""

    name: str
    label: str
    lib: str
    packing: bool = False
    quantize: str | None = None
    checkpointing: str | None = None
    bounded: bool = False
    checkpoints: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "lib": self.lib,
            "packing": self.packing,
            "quantize": self.quantize,
            "checkpointing": self.checkpointing,
            "bounded": self.bounded,
            "checkpoints": self.checkpoints,
        }


RUNS: tuple[RunSpec, ...] = (
    RunSpec("a_ours", "(a) ours, unpacked", "ours", checkpoints=True),
    RunSpec("b_ours_packed", "(b) ours, packed", "ours", packing=True, checkpoints=True),
    RunSpec("c_trl", "(c) peft + trl SFTTrainer, defaults", "trl", checkpoints=True),
    RunSpec("d_trl_packed", "(d) peft + trl SFTTrainer, packing on", "trl", packing=True, checkpoints=True),
    RunSpec("e_ours_qlora", "(e) ours QLoRA NF4, packed", "ours", packing=True, quantize="nf4"),
    RunSpec("f_peft_qlora", "(f) peft QLoRA NF4 + trl", "trl", quantize="nf4"),
    RunSpec(
        "g_ours_ckpt",
        "(g) ours, packed, gradient checkpointing",
        "ours",
        packing=True,
        checkpointing="non-reentrant",
        bounded=True,
    ),
    RunSpec("g_ours_no_ckpt", "(g) ours, packed, no checkpointing", "ours", packing=True, bounded=True),
)
RUNS_BY_NAME: dict[str, RunSpec] = {spec.name: spec for spec in RUNS}
# the runs whose final losses set the common target of "time to the same dev loss"
LOSS_RUNS: tuple[str, ...] = ("a_ours", "b_ours_packed", "c_trl", "d_trl_packed")
BASELINE = "c_trl"

# (name, numerator run, denominator run, record key, how: "higher" = numerator/denominator of a rate,
# "lower" = denominator/numerator of a time, so > 1 always means the numerator run is better; "ratio" = plain)
RATIOS: tuple[tuple[str, str, str, str, str], ...] = (
    ("ours packed vs trl defaults: speed-up to the same dev loss", "b_ours_packed", "c_trl", "time_to_target", "lower"),
    ("ours unpacked vs trl defaults: speed-up to the same dev loss", "a_ours", "c_trl", "time_to_target", "lower"),
    ("ours packed vs trl packed: speed-up to the same dev loss", "b_ours_packed", "d_trl_packed", "time_to_target", "lower"),
    ("ours packed vs trl defaults: speed-up to trl's final dev loss", "b_ours_packed", "c_trl", "time_to_baseline", "lower"),
    ("ours unpacked vs trl defaults: speed-up to trl's final dev loss", "a_ours", "c_trl", "time_to_baseline", "lower"),
    ("ours packed / trl defaults: train tokens/s", "b_ours_packed", "c_trl", "tokens_per_second", "higher"),
    ("ours unpacked / trl defaults: train tokens/s", "a_ours", "c_trl", "tokens_per_second", "higher"),
    ("ours packed / ours unpacked: train tokens/s", "b_ours_packed", "a_ours", "tokens_per_second", "higher"),
    ("trl packed / trl defaults: train tokens/s", "d_trl_packed", "c_trl", "tokens_per_second", "higher"),
    ("ours packed / trl defaults: peak training RSS", "b_ours_packed", "c_trl", "peak_train_rss_bytes", "ratio"),
    ("ours packed / ours unpacked: peak training RSS", "b_ours_packed", "a_ours", "peak_train_rss_bytes", "ratio"),
    ("ours packed - trl defaults: answer accuracy", "b_ours_packed", "c_trl", "accuracy", "difference"),
    ("ours QLoRA / ours float32: base weights memory", "e_ours_qlora", "b_ours_packed", "base_weight_bytes", "ratio"),
    ("ours QLoRA / ours float32: peak training RSS", "e_ours_qlora", "b_ours_packed", "peak_train_rss_bytes", "ratio"),
    ("ours QLoRA / ours float32: train tokens/s", "e_ours_qlora", "b_ours_packed", "tokens_per_second", "ratio"),
    ("peft QLoRA / peft float32 (trl): base weights memory", "f_peft_qlora", "c_trl", "base_weight_bytes", "ratio"),
    ("peft QLoRA / peft float32 (trl): peak training RSS", "f_peft_qlora", "c_trl", "peak_train_rss_bytes", "ratio"),
    ("ours QLoRA / peft QLoRA: train tokens/s", "e_ours_qlora", "f_peft_qlora", "tokens_per_second", "higher"),
    ("ours QLoRA / peft QLoRA: peak training RSS", "e_ours_qlora", "f_peft_qlora", "peak_train_rss_bytes", "ratio"),
    ("checkpointing on / off (ours): peak training RSS", "g_ours_ckpt", "g_ours_no_ckpt", "peak_train_rss_bytes", "ratio"),
    ("checkpointing on / off (ours): train tokens/s", "g_ours_ckpt", "g_ours_no_ckpt", "tokens_per_second", "ratio"),
)  # fmt: skip


def loss_target(records: Mapping[str, Mapping[str, Any]], names: Sequence[str] = LOSS_RUNS) -> float | None:
    """The common dev-loss target: the highest final loss among ``names`` present in ``records`` (None when
    none of them has a final loss)."""
    finals = [
        float(records[n]["final_loss"])
        for n in names
        if n in records and records[n].get("final_loss") is not None
    ]
    return max(finals) if finals else None


def time_to_loss(
    checkpoints: Sequence[Mapping[str, Any]], target: float, start_loss: float | None = None
) -> float | None:
    """Training seconds at which the dev loss first reaches ``target`` (see the module docstring): linear
    interpolation between the previous checkpoint (or time 0 at ``start_loss``, the base model's loss) and the
    first checkpoint with ``loss <= target``; None if no checkpoint gets there. ``checkpoints`` are in step order."""
    previous: tuple[float, float] | None = None if start_loss is None else (0.0, float(start_loss))
    for point in checkpoints:
        seconds, loss = float(point["train_seconds"]), float(point["loss"])
        if loss <= target:
            if previous is None or previous[1] <= target or previous[1] == loss:
                return seconds
            before_seconds, before_loss = previous
            fraction = (before_loss - target) / (before_loss - loss)  # in (0, 1]
            return before_seconds + fraction * (seconds - before_seconds)
        previous = (seconds, loss)
    return None


def add_time_to_target(records: dict[str, dict[str, Any]]) -> float | None:
    """Set ``time_to_target`` (and ``loss_target``) on every record that has checkpoints; returns the target.
    Also ``time_to_baseline``: the training seconds at which a run first reaches the final dev loss of
    :data:`BASELINE` (trl's defaults), the loss the reference ends its training at (None without that run)."""
    target = loss_target(records)
    baseline = records.get(BASELINE, {}).get("final_loss")
    for record in records.values():
        record["loss_target"] = target
        checkpoints = record.get("checkpoints") or []
        record["time_to_target"] = (
            None
            if target is None or not checkpoints
            else time_to_loss(checkpoints, target, record.get("start_loss"))
        )
        record["time_to_baseline"] = (
            None
            if baseline is None or not checkpoints
            else time_to_loss(checkpoints, float(baseline), record.get("start_loss"))
        )
    return target


def ratios(records: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The :data:`RATIOS` whose two runs are present with the value (> 1 means the first run is better for
    ``higher`` / ``lower``; ``ratio`` is the plain quotient; ``difference`` the plain difference)."""
    out: dict[str, float] = {}
    for name, first, second, key, how in RATIOS:
        a = records.get(first, {}).get(key)
        b = records.get(second, {}).get(key)
        if a is None or b is None:
            continue
        if how == "difference":
            out[name] = float(a) - float(b)
        elif how == "lower":
            if float(a) > 0:
                out[name] = float(b) / float(a)
        elif float(b) > 0:
            out[name] = float(a) / float(b)
    return out


def _fmt(value: Any, pattern: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(float(value) / scale, pattern)


def markdown(
    command: str,
    settings: Mapping[str, Any],
    records: Mapping[str, Mapping[str, Any]],
    notes: Sequence[str] = (),
) -> str:
    """The page written to docs/decoder_comparison.md: the exact command, the settings, one table row per run,
    the ratios and ``notes``."""
    target = next((r.get("loss_target") for r in records.values() if r.get("loss_target") is not None), None)
    baseline = records.get(BASELINE, {}).get("final_loss")
    lines = [
        "# Instruction tuning: adapterhub against peft + trl on SmolLM2",
        "",
        "Written by `bench/decoder/compare_peft_trl.py`; rerun it to refresh every figure below:",
        "",
        "```",
        command,
        "```",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".",
        "",
        f"Dev loss target for the time-to-loss column (the worst final dev loss of runs a-d): {_fmt(target, '.4f')}; "
        f'"time to trl\'s loss": to the final dev loss of (c), {_fmt(baseline, ".4f")} ("-": never reached).',
        "",
        "| run | steps | train s | time to target (s) | time to trl's loss (s) | tokens/s | dev loss | accuracy "
        "| peak train RSS (MiB) | process peak RSS (MiB) | base weights (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for spec in RUNS:
        r = records.get(spec.name)
        if r is None:
            continue
        lines.append(
            f"| {spec.label} | {r.get('steps', '-')} | {_fmt(r.get('train_seconds'), '.1f')} "
            f"| {_fmt(r.get('time_to_target'), '.1f')} | {_fmt(r.get('time_to_baseline'), '.1f')} "
            f"| {_fmt(r.get('tokens_per_second'), '.1f')} "
            f"| {_fmt(r.get('final_loss'), '.4f')} | {_fmt(r.get('accuracy'), '.3f')} "
            f"| {_fmt(r.get('peak_train_rss_bytes'), '.0f', MIB)} | {_fmt(r.get('process_peak_rss_bytes'), '.0f', MIB)} "
            f"| {_fmt(r.get('base_weight_bytes'), '.0f', MIB)} |"
        )
    lines += ["", "## Ratios (measured in this run)", ""]
    for name, value in ratios(records).items():
        lines.append(f"- {name}: **{value:+.3f}**" if "accuracy" in name else f"- {name}: **{value:.2f}x**")
    if notes:
        lines += ["", "## How it is measured", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
