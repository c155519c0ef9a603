"""One run of ``bench/decoder/compare_peft_trl.py``, alone in its process (so its memory is its own).

    python bench/decoder/compare_worker.py --run b_ours_packed --settings settings.json

Loads the SmolLM2 float32 copy (or quantised to NF4), the Rotten Tomatoes rows turned into instructions by
adapterhub's converter, trains LoRA (r 8, alpha 16, all-linear, dropout 0) with either

* ``ours``: adapterhub's training step, as :func:`adapterhub.training.train` runs it (``prepare_model``, the
  seeded shuffled loader of ``make_loader``, ``collate_chat`` or ``collate_packed`` after ``resolve_packing``,
  ``forward_batch``'s response-only loss, AdamW with the ``TrainConfig`` defaults: weight decay, gradient clipping,
  linear warm-up ratio and decay), driven here so that the clock can stop while the dev loss is measured; or
* ``trl``: peft's ``LoraConfig`` given to trl's ``SFTTrainer`` with ``SFTConfig``'s defaults except the shared
  settings (learning rate, epochs, max length, batch size, seed, packing) and ``save_strategy="no"``. Its rows
  are prompt-completion conversations, so trl computes the loss on the completion (the answer) only. QLoRA:
  the model loaded with ``BitsAndBytesConfig`` (NF4, double quantisation, float32 compute, as ours) and prepared
  with ``peft.prepare_model_for_kbit_training``.

Every ``eval_every`` updates (and after the last) the clock stops and ONE evaluator measures the dev loss:
``adapterhub.training.generate_eval.response_loss`` (mean cross-entropy over the response tokens of the same dev
rows, tokenised by adapterhub). At the end answer accuracy comes from ``evaluate_generation`` (greedy answers,
normalised exact match). Prints one JSON record (see ``compare_report``) as its last stdout line.

Memory: ``peak_train_rss_bytes`` is the highest resident set size while training (the kernel's high-water mark,
reset through ``/proc/self/clear_refs`` when training starts and after each evaluation, read before each
evaluation), ``process_peak_rss_bytes`` the process's peak since it started (loading included), and
``base_weight_bytes`` the bytes of the base model's parameters and buffers (shared tensors once; bitsandbytes
quantisation state included; adapter weights excluded).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_report import RUNS_BY_NAME, RunSpec

LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGETS = 8, 16, 0.0, "all-linear"
SFT_REPORTED = (
    "bf16", "gradient_checkpointing", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
    "packing_strategy", "padding_free", "completion_only_loss", "logging_steps", "use_cpu",
)  # fmt: skip
OUR_METHOD = "adapter:lora[r=8,alpha=16,dropout=0.0,target_modules=all-linear]"


class PeakRss:
    """The resident set's high-water mark over chosen windows (``VmHWM``, reset by writing 5 to clear_refs).

    Resetting the mark also lowers what ``getrusage`` reports as the process's peak, so the mark is read before
    every reset: :meth:`process_peak` is the peak since the process started, windows or not."""

    def __init__(self) -> None:
        self.peak = 0
        self.overall = 0
        self.resettable = True

    def reset(self) -> None:
        self.overall = max(self.overall, _status("VmHWM"))
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False

    def close_window(self) -> None:
        self.peak = max(self.peak, _status("VmHWM"))

    def process_peak(self) -> int:
        rusage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(self.overall, _status("VmHWM"), rusage)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Clock:
    """Training time with evaluations cut out, and the dev-loss checkpoints."""

    def __init__(self, evaluate: Callable[[Any], float], eval_every: int | None, peak: PeakRss) -> None:
        self.evaluate = evaluate
        self.eval_every = eval_every
        self.peak = peak
        self.started = 0.0
        self.paused = 0.0
        self.checkpoints: list[dict[str, Any]] = []

    def start(self) -> None:
        self.peak.reset()
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started - self.paused

    def maybe_checkpoint(self, step: int, total: int, model: Any) -> None:
        """Measure the dev loss after update ``step`` of ``total`` when it is a multiple of ``eval_every`` (None:
        only after the last) or the last."""
        if step != total and (self.eval_every is None or step % self.eval_every):
            return
        if self.checkpoints and self.checkpoints[-1]["step"] == step:
            return
        seconds = self.seconds()
        self.peak.close_window()
        tick = time.perf_counter()
        loss = self.evaluate(model)
        self.checkpoints.append({"step": step, "train_seconds": seconds, "loss": loss})
        print(f"step {step}/{total}: dev loss {loss:.4f} after {seconds:.1f} s of training", file=sys.stderr)
        self.peak.reset()
        self.paused += time.perf_counter() - tick


def load_rows(settings: dict[str, Any]) -> Any:
    """The converted task with ``train_rows`` seeded-random training rows and the first ``dev_rows`` dev rows."""
    from adapterhub.data import load_task
    from adapterhub.data.instructions import instruction_task

    task = instruction_task(load_task(settings["data"]))
    count = min(settings["train_rows"], len(task.train))
    train = random.Random(settings["seed"]).sample(list(task.train), count)
    return dataclasses.replace(task, train=tuple(train), dev=task.dev[: settings["dev_rows"]])


def base_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the base model's tensors (parameters and buffers, each storage once, bitsandbytes quant states
    included); adapter tensors (peft's ``lora_*``, adapterhub's store ``_adapterhub``) are left out."""
    seen: set[int] = set()
    total = 0
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in named:
        if "lora_" in name or "_adapterhub" in name:
            continue
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
        total += _quant_state_bytes(getattr(tensor, "quant_state", None), seen)
    return total


def _quant_state_bytes(state: Any, seen: set[int]) -> int:
    if state is None:
        return 0
    total = 0
    for value in vars(state).values():
        if isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            total += value.numel() * value.element_size()
        elif hasattr(value, "absmax"):  # the nested state of double quantisation
            total += _quant_state_bytes(value, seen)
    return total


def train_ours(
    spec: RunSpec, settings: dict[str, Any], task: Any, tokenizer: Any, clock: Clock
) -> dict[str, Any]:
    from adapterhub.training.chat_batches import collate_chat, encode_chat
    from adapterhub.training.config import TrainConfig
    from adapterhub.training.loop import make_loader
    from adapterhub.training.methods import trainable_parameters
    from adapterhub.training.modeling import (
        HeadSettings,
        enable_checkpointing,
        forward_batch,
        load_base,
        prepare_model,
    )
    from adapterhub.training.packing import EXAMPLES_KEY, TOKENS_KEY, collate_packed, resolve_packing
    from adapterhub.training.schedule import linear_schedule, warmup_steps_for

    model, _, _ = load_base(settings["model"], causal_lm=True, quantize=spec.quantize)
    model = prepare_model(model, task, OUR_METHOD, "task", HeadSettings())
    enable_checkpointing(model, spec.checkpointing)
    packed, _ = resolve_packing(spec.packing, model)  # packing=True raises if it cannot be exact
    max_length = settings["max_length"]
    data = encode_chat(task.train, tokenizer, max_length=max_length).dataset
    collate: Any = functools.partial(collate_packed, max_length=max_length) if packed else collate_chat
    defaults = TrainConfig()
    loader = make_loader(
        data, tokenizer, settings["batch_size"], shuffle=True, seed=settings["seed"], collate_fn=collate
    )
    total = max(1, math.ceil(settings["epochs"] * len(loader)))
    if spec.bounded:
        total = min(total, settings["bounded_steps"])
    params = list(trainable_parameters(model).values())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": defaults.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=settings["learning_rate"],
    )
    scheduler = linear_schedule(optimizer, warmup_steps_for(total, defaults.warmup_ratio, None), total)
    weights = base_weight_bytes(model)
    start_loss = clock.evaluate(model) if clock.eval_every is not None else None
    model.train()
    step, epoch, tokens = 0, 0, 0
    bar = _bar(total, spec.label)
    clock.start()
    while step < total:
        loader.sampler.generator = torch.Generator().manual_seed(settings["seed"] + epoch)  # type: ignore[attr-defined]
        for batch in loader:
            batch.pop(EXAMPLES_KEY, None)
            count = batch.pop(TOKENS_KEY, None)
            tokens += int(count) if count is not None else int(batch["attention_mask"].sum())
            loss, _ = forward_batch(model, batch, "generation")
            assert loss is not None
            loss.backward()
            if defaults.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, defaults.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            clock.maybe_checkpoint(step, total, model)
            model.train()
            if step >= total:
                break
        epoch += 1
    bar.close()
    return {
        "model": model,
        "steps": step,
        "tokens": tokens,
        "packed": packed,
        "base_weight_bytes": weights,
        "start_loss": start_loss,
    }


def train_trl(
    spec: RunSpec, settings: dict[str, Any], task: Any, tokenizer: Any, clock: Clock
) -> dict[str, Any]:
    import datasets
    import peft
    import transformers
    import trl

    extra: dict[str, Any] = {}
    if spec.quantize is not None:
        extra["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.quantize,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    model = transformers.AutoModelForCausalLM.from_pretrained(settings["model"], **extra)
    if spec.quantize is not None:
        model = peft.prepare_model_for_kbit_training(model)
    lora = peft.LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )
    rows = [
        {"prompt": [dict(m) for m in ex.messages[:-1]], "completion": [dict(ex.messages[-1])]}
        for ex in task.train
    ]
    scratch = tempfile.mkdtemp(prefix="bench-trl-")
    config = trl.SFTConfig(
        output_dir=scratch,
        learning_rate=settings["learning_rate"],
        num_train_epochs=settings["epochs"],
        max_length=settings["max_length"],
        per_device_train_batch_size=settings["batch_size"],
        packing=spec.packing,
        seed=settings["seed"],
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),  # required on CPU with SFTConfig's default bf16=True
        **({"max_steps": settings["bounded_steps"]} if spec.bounded else {}),
    )
    start_loss: dict[str, float] = {}

    class Checkpoints(transformers.TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if clock.eval_every is not None:
                start_loss["loss"] = clock.evaluate(model)
                model.train()
            clock.start()

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            clock.maybe_checkpoint(state.global_step, state.max_steps, model)
            model.train()

    trainer = trl.SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Checkpoints()],
    )
    weights = base_weight_bytes(trainer.model)  # type: ignore[arg-type]
    trainer.train()
    steps = int(trainer.state.global_step)
    return {
        "model": trainer.model,
        "steps": steps,
        "tokens": None,
        "packed": spec.packing,
        "base_weight_bytes": weights,
        "start_loss": start_loss.get("loss"),
        "sft_config": {key: _plain(getattr(config, key)) for key in SFT_REPORTED},
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def _bar(total: int, label: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="step", file=sys.stderr, dynamic_ncols=True)


def run(spec: RunSpec, settings: dict[str, Any]) -> dict[str, Any]:
    """Train and measure one run; the record that ``compare_report`` reads."""
    import transformers

    from adapterhub.training.chat_batches import collate_chat, encode_chat
    from adapterhub.training.generate_eval import evaluate_generation, response_loss

    torch.set_num_threads(settings["threads"])
    torch.manual_seed(settings["seed"])
    task = load_rows(settings)
    tokenizer = transformers.AutoTokenizer.from_pretrained(settings["model"])
    max_length = settings["max_length"]
    dev = encode_chat(task.dev, tokenizer, max_length=max_length).dataset
    dev_batches = [
        collate_chat([dev[i] for i in range(start, min(start + settings["batch_size"], len(dev)))], tokenizer)
        for start in range(0, len(dev), settings["batch_size"])
    ]
    train_data = encode_chat(task.train, tokenizer, max_length=max_length).dataset
    train_tokens = sum(len(train_data[i]["input_ids"]) for i in range(len(train_data)))

    def evaluate(model: Any) -> float:
        loss = response_loss(model, dev_batches, progress=settings["progress"])
        assert loss is not None, "the dev rows hold no response token"
        return loss

    peak = PeakRss()
    clock = Clock(evaluate, settings["eval_every"] if spec.checkpoints else None, peak)
    trainer = train_ours if spec.lib == "ours" else train_trl
    out = trainer(spec, settings, task, tokenizer, clock)
    model = out.pop("model")
    seconds = clock.checkpoints[-1]["train_seconds"] if clock.checkpoints else clock.seconds()
    tokens = out.pop("tokens")
    if tokens is None:  # trl: the rows' tokens (adapterhub's tokenisation) times the epochs trained
        tokens = train_tokens * settings["epochs"]
    accuracy = None
    if settings["accuracy_rows"] > 0 and not spec.bounded:
        report = evaluate_generation(
            model,
            tokenizer,
            task.dev[: settings["accuracy_rows"]],
            answers=task.answers,
            batch_size=settings["batch_size"] * 2,
            progress=settings["progress"],
        )
        accuracy = report.answers.accuracy
        out["answer_counts"] = dict(report.answers.answer_counts)
        out["majority_rate"] = report.answers.majority_rate
    return {
        "run": spec.name,
        "label": spec.label,
        "lib": spec.lib,
        "spec": spec.to_dict(),
        **out,
        "train_seconds": seconds,
        "train_tokens": tokens,
        "tokens_per_second": tokens / seconds if seconds else None,
        "checkpoints": clock.checkpoints,
        "final_loss": clock.checkpoints[-1]["loss"] if clock.checkpoints else None,
        "accuracy": accuracy,
        "peak_train_rss_bytes": peak.peak,
        "peak_rss_resettable": peak.resettable,
        "process_peak_rss_bytes": peak.process_peak(),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "adapterhub"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "?"
    return found


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, choices=sorted(RUNS_BY_NAME))
    parser.add_argument(
        "--settings", required=True, help="JSON file of the shared settings (from the driver)"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    settings = json.loads(Path(args.settings).read_text())
    record = run(RUNS_BY_NAME[args.run], settings)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
