"""``adapterhub demo --decoder``: the same cycle as the encoder demo, on a real decoder, on a CPU.

1. Turns the Rotten Tomatoes critic snippets (the encoder demo's data) into instructions with the converter
   (:func:`adapterhub.data.instructions.instruction_task`, the default template: "Classify the text. Answer with
   one of: negative, positive. Text: ..."), takes a seeded sample of train and dev rows, and trains a LoRA adapter
   (``adapter:lora``: r 8, alpha 8 on the attention's q and v projections, lr 2e-3) on the packaged
   SmolLM2-135M-Instruct with the response-only loss (:func:`adapterhub.training.train`), reporting answer
   accuracy before (the base alone) and after by generating, beside the dev rows' majority-label rate, the
   fraction of allowed answers and how the answers spread over the labels; a few generated answers are printed
   beside the gold ones.
2. Saves the adapter, reloads it into a fresh base and checks the logits are identical (max absolute difference).
3. Publishes it to an embedded hub (SQLite + a folder) and loads it back by name.
4. Serves the base and the adapter together in one ``serve-model`` engine on loopback (one continuous-batching
   generation engine) and sends chat completions for both at once (greedy), printing both answers and checking
   each against ``generate`` on that prompt alone.
5. Keeps the hub's website and the model server up until Ctrl-C (``--no-serve``: stops both and exits).

Writes ``<out>/summary.json`` (default ``runs/demo-decoder``): ``accuracy_before``, ``accuracy``,
``majority_rate``, ``allowed_fraction(_before)``, ``answer_counts(_before)``, ``reload_max_diff``,
``hub_max_diff``, ``served`` and the settings and timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the demo's functions import torch (``--help`` stays light)
    import torch

    from adapterhub.data.task import TaskData

DEFAULT_OUT = Path("runs/demo-decoder")
ADAPTER_NAME = "rt-lora"
METHOD = "adapter:lora"
# bounded to a few minutes on 2 cores (see docs/training.md for what these settings measured)
DEFAULTS: dict[str, Any] = {
    "train_examples": 96,
    "dev_examples": 64,
    "epochs": 2.0,
    "batch_size": 8,
    "max_length": 128,
    "lr": 2e-3,  # twice the adapter default: 24 updates, not the 40 that docs/training.md measured at 1e-3
    "out": DEFAULT_OUT,
}
ENCODER_ONLY = ("configs", "steps")  # options of the encoder demo that mean nothing here
SERVED_ROWS = 2  # dev rows sent to the model server, each for the base and for the adapter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoder demo's own options (the shared ones are the encoder demo's, with the defaults above)."""
    group = parser.add_argument_group("--decoder (LoRA instruction tuning of SmolLM2)")
    group.add_argument(
        "--train-examples",
        type=int,
        default=None,
        help=f"training rows, a seeded sample (default {DEFAULTS['train_examples']})",
    )
    group.add_argument("--epochs", type=float, default=None, help=f"epochs (default {DEFAULTS['epochs']:g})")
    # for tests and other decoders: a causal LM folder whose tokenizer has a chat template, and a task that
    # load_task reads (classification: converted to instructions; generation: used as it is)
    group.add_argument("--model", default=None, help=argparse.SUPPRESS)
    group.add_argument("--data", default=None, help=argparse.SUPPRESS)


def check_options(args: argparse.Namespace, decoder: bool) -> None:
    """Refuse the options of the other demo (the encoder demo's ``--configs`` / ``--steps`` with ``--decoder``, the
    decoder's own without it), naming them. Each demo fills the shared options left unset with its defaults."""
    own = ("train_examples", "epochs", "model", "data")
    foreign = ENCODER_ONLY if decoder else own
    given = [name for name in foreign if getattr(args, name, None) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        which = "the encoder demo (without --decoder)" if decoder else "the decoder demo (--decoder)"
        raise ConfigError(f"{flags}: only for {which}; leave {'it' if len(given) == 1 else 'them'} out.")


def _check(args: argparse.Namespace) -> dict[str, Any]:
    given: dict[str, Any] = {key: getattr(args, key, None) for key in DEFAULTS}
    settings: dict[str, Any] = {key: DEFAULTS[key] if v is None else v for key, v in given.items()}
    for name in ("train_examples", "dev_examples", "batch_size"):
        if not isinstance(settings[name], int) or settings[name] < 1:
            raise ConfigError(
                f"--{name.replace('_', '-')} must be a positive integer, got {settings[name]!r}."
            )
    if settings["max_length"] < 16:
        raise ConfigError(
            f"--max-length {settings['max_length']} is too short for a chat prompt; use at least 16 "
            f"(default {DEFAULTS['max_length']})."
        )
    if not settings["epochs"] > 0:
        raise ConfigError(f"--epochs must be a positive number, got {settings['epochs']!r}.")
    if not settings["lr"] > 0:
        raise ConfigError(f"--lr must be a positive number, got {settings['lr']!r}.")
    return settings


def load_instructions(source: str | None) -> TaskData:
    """The demo's task as instructions: the packaged Rotten Tomatoes (``None``) or anything ``load_task`` reads;
    a classification task is converted, a generation task is used as it is, any other kind is refused."""
    from adapterhub.data import load_task, packaged_rotten_tomatoes
    from adapterhub.data.instructions import CONVERTIBLE_KINDS, instruction_task

    task = packaged_rotten_tomatoes() if source is None else load_task(source)
    if task.kind == "generation":
        return task
    if task.kind not in CONVERTIBLE_KINDS:
        raise ConfigError(
            f"--data {source}: a {task.kind} task; the decoder demo takes a classification or multiple-choice "
            "task (turned into instructions) or a generation task."
        )
    return instruction_task(task)


def _load_decoder(model: str | None) -> tuple[Any, Any]:
    """The base causal LM (``None``: the packaged SmolLM2, named by its hub name so that adapters and the hub
    call it that) and its tokenizer, which must have a chat template."""
    from adapterhub.api.model import init
    from adapterhub.data.packaged import DECODER_MODEL_NAME
    from adapterhub.training.modeling import load_base

    base, tokenizer, _ = load_base(model or "smollm2", causal_lm=True)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"--model {model}: its tokenizer has no chat template, so instructions cannot be rendered; use a "
            "chat model (the default, SmolLM2-135M-Instruct, has one)."
        )
    if model is None:
        config: Any = base.config
        config.name_or_path = DECODER_MODEL_NAME
    return init(base).eval(), tokenizer


def run_decoder_demo(args: argparse.Namespace) -> int:
    import torch
    import transformers

    check_options(args, decoder=True)
    settings = _check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    task = load_instructions(args.data)
    full = (len(task.train), len(task.dev))
    task = task.subset(train=settings["train_examples"], dev=settings["dev_examples"], seed=args.seed)
    print(
        f"data: {task.name} as instructions, a seeded sample of {len(task.train):,} of {full[0]:,} train and "
        f"{len(task.dev):,} of {full[1]:,} dev rows; answers {list(task.answers) or 'free text'}"
    )
    first = task.train[0].messages if task.train else None
    if first:
        print(f"  first row: {first[0]['content']!r} -> {first[-1]['content']!r}")
    model, tokenizer = _load_decoder(args.model)
    model_name = str(model.config.name_or_path)
    print(f"model: {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    out = Path(settings["out"])
    summary: dict[str, Any] = {
        "model": model_name,
        "task": task.name,
        "method": METHOD,
        "adapter": ADAPTER_NAME,
    }
    summary.update(_train(model, tokenizer, task, settings, args.seed, out))
    _print_samples(summary["samples"])
    saved = model.save_adapter(out / ADAPTER_NAME, ADAPTER_NAME)
    summary["size_bytes"] = sum(p.stat().st_size for p in saved.iterdir() if p.is_file())
    print(
        f"saved {saved} ({summary['size_bytes'] / 1e6:.2f} MB: {', '.join(sorted(p.name for p in saved.iterdir()))})"
    )
    batch = _dev_batch(task, tokenizer, settings["max_length"])
    fresh, _ = _load_decoder(args.model)
    fresh.load_adapter(saved, set_active=True)
    summary["reload_max_diff"] = _max_diff(model, fresh, batch)
    print(
        f"reloaded {ADAPTER_NAME} from disk into a fresh base: max |logit difference| = {summary['reload_max_diff']:.2e}"
    )
    ok = summary["reload_max_diff"] < 1e-4
    with contextlib.ExitStack() as servers:
        hub = None
        if not args.no_hub:
            from adapterhub.hub.embedded import EmbeddedHub

            hub = servers.enter_context(EmbeddedHub(out / "hub", port=args.port))
            ok = _publish(hub, out, model, fresh, batch, summary) and ok
        fresh.delete_adapter(ADAPTER_NAME)  # the server's base: adapters come from their folders
        server = servers.enter_context(_model_server(fresh, tokenizer, saved, args.serve_port))
        ok = _serve_both(server, model, tokenizer, task, summary) and ok
        summary["wall_seconds"] = time.perf_counter() - started
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary: {out / 'summary.json'} ({summary['wall_seconds']:.0f} s in all)")
        if not args.no_serve:
            print(f"model server: {server.url}   (POST /v1/chat/completions, GET /v1/models, GET /docs)")
            if hub is not None:
                print(f"website: {hub.url}/")
            print("serving; press Ctrl-C to stop")
            server.wait()
    return 0 if ok else 1


def _train(
    model: Any, tokenizer: Any, task: TaskData, settings: dict[str, Any], seed: int, out: Path
) -> dict[str, Any]:
    """LoRA on ``task`` through the training loop (its progress bars, generative evaluation before and once at the
    end); returns the summary's training figures."""
    import math

    from adapterhub.training import TrainConfig, train

    updates = max(1, math.ceil(settings["epochs"] * math.ceil(len(task.train) / settings["batch_size"])))
    config = TrainConfig(
        method=METHOD,
        learning_rate=settings["lr"],
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        eval_batch_size=16,
        max_length=settings["max_length"],
        eval_every=updates,  # evaluate once, at the end (each evaluation generates for every dev row)
        seed=seed,
        head_name=ADAPTER_NAME,
        output_dir=str(out / "train"),
    )
    print(
        f"training {METHOD} as {ADAPTER_NAME!r}: {len(task.train)} rows x {settings['epochs']:g} epochs, batch "
        f"{settings['batch_size']} ({updates} updates), max length {settings['max_length']}, lr "
        f"{settings['lr']:g}; answer accuracy before and after on {len(task.dev)} dev rows"
    )
    results = train(model, task, config, tokenizer=tokenizer)
    g = results.generation or {}
    if "accuracy" not in g:
        raise ConfigError("training ended without an evaluation; the demo needs dev rows (--dev-examples).")
    line = (
        f"answer accuracy {g['accuracy_before']:.1%} before (base alone) -> {g['accuracy']:.1%} after LoRA; "
        f"majority label rate {g['majority_rate']:.1%}"
    )
    if g.get("allowed_fraction") is not None:
        line += f"; allowed answers {g['allowed_fraction_before']:.0%} -> {g['allowed_fraction']:.0%}"
    print(line)
    if g.get("answer_counts"):
        print(f"  answers before: {g['answer_counts_before']}; after: {g['answer_counts']}")
    speed = results.train_tokens_per_second
    print(
        f"  {results.steps} updates in {results.train_seconds:.0f} s"
        + (f" ({speed:.0f} tokens/s)" if speed else "")
        + f"; {results.trainable_parameters:,} trainable parameters"
    )
    keys = ("accuracy_before", "accuracy", "majority_rate", "allowed_fraction_before", "allowed_fraction")
    return {
        **{key: g.get(key) for key in keys},
        "answer_counts_before": g.get("answer_counts_before"),
        "answer_counts": g.get("answer_counts"),
        "loss_before": g.get("loss_before"),
        "loss": g.get("loss"),
        "dev_rows": len(task.dev),
        "train_rows": len(task.train),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
        "updates": results.steps,
        "train_seconds": results.train_seconds,
        "train_tokens_per_second": speed,
        "trainable_parameters": results.trainable_parameters,
        "samples": g.get("samples", []),
    }


def _print_samples(samples: list[dict[str, str]]) -> None:
    from adapterhub.training.generate_eval import normalise

    print("a few dev rows after training (generated beside gold):")
    for sample in samples:
        text = " ".join(sample["prompt"].split())
        text = text if len(text) <= 70 else "..." + text[-67:]
        mark = "ok " if normalise(sample["generated"]) == normalise(sample["gold"]) else "   "
        print(f"  {mark}gold {sample['gold']!r:12} generated {sample['generated'].strip()!r:14} | {text}")


def _dev_batch(task: TaskData, tokenizer: Any, max_length: int) -> dict[str, torch.Tensor]:
    """The first dev conversations (up to 4) as one padded batch of ``input_ids`` / ``attention_mask``."""
    from adapterhub.training.chat_batches import collate_chat, encode_chat

    encoded = encode_chat(task.dev[:4], tokenizer, max_length=max_length)
    rows = [encoded.dataset[i] for i in range(len(encoded.dataset))]
    batch = collate_chat(rows, tokenizer)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _max_diff(a: Any, b: Any, batch: dict[str, torch.Tensor]) -> float:
    """max |logits of a - logits of b| over the real (unpadded) positions of ``batch``, adapter active in both."""
    import torch

    with torch.no_grad(), a.adapter_setup(ADAPTER_NAME), b.adapter_setup(ADAPTER_NAME):
        first, second = a.eval()(**batch).logits, b.eval()(**batch).logits  # (batch, seq, vocab)
    keep = batch["attention_mask"].bool()  # (batch, seq)
    return float((first[keep] - second[keep]).abs().max())


def _publish(
    hub: Any, out: Path, model: Any, fresh: Any, batch: dict[str, Any], summary: dict[str, Any]
) -> bool:
    print(f"embedded hub (SQLite + folder in {out / 'hub'}) at {hub.url}")
    info = model.push_adapter(
        ADAPTER_NAME,
        owner=hub.owner,
        task="sentiment",
        subtask="rotten_tomatoes",
        license="apache-2.0",
        description=f"{ADAPTER_NAME}: LoRA instruction tuning by `adapterhub demo --decoder` on Rotten Tomatoes.",
        metrics={"accuracy": round(float(summary["accuracy"]), 4)},
        token=hub.token,
        hub_url=hub.url,
    )
    print(
        f"published @{hub.owner}/{ADAPTER_NAME} version {info.get('version')} (sha256 {str(info.get('sha256', ''))[:12]}...)"
    )
    qualified = f"@{hub.owner}/{ADAPTER_NAME}"
    fresh.load_adapter(qualified, hub_url=hub.url, set_active=True, overwrite_ok=True)
    difference = _max_diff(model, fresh, batch)
    print(
        f"loaded {qualified!r} from the hub: max |logit difference| to the trained model = {difference:.2e}"
    )
    summary["hub"] = {"url": hub.url, "name": qualified, "version": info.get("version")}
    summary["hub_max_diff"] = difference
    return difference < 1e-4


def _model_server(base: Any, tokenizer: Any, adapter_dir: Path, port: int) -> Any:
    """The ``serve-model`` engine over ``base`` (no adapter loaded) serving the saved adapter from its folder:
    one generation engine for the base and the adapter."""
    from adapterhub.serving.background import BackgroundServer
    from adapterhub.serving.engine import EngineConfig, ServingEngine

    engine = ServingEngine(
        base,
        tokenizer,
        config=EngineConfig(max_loaded=1, max_num_seqs=8),
        adapters={ADAPTER_NAME: str(adapter_dir)},
    )
    return BackgroundServer(engine, port=port, preload=True)


def _post_json(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _serve_both(server: Any, model: Any, tokenizer: Any, task: TaskData, summary: dict[str, Any]) -> bool:
    """Send greedy chat completions for the first dev rows to the base and to the adapter, all at once; each
    answer must equal ``generate`` of the trained model on that prompt alone (the adapter on or off)."""
    from concurrent.futures import ThreadPoolExecutor

    from adapterhub.data.chat import generation_prompt
    from adapterhub.training.generate_eval import generate_answers

    base_id = server.engine.model_id
    rows = task.dev[:SERVED_ROWS]
    max_tokens = 8
    payloads: list[dict[str, Any]] = [
        {
            "model": name,
            "messages": [dict(m) for m in (example.messages or ())[:-1]],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        for example in rows
        for name in (base_id, ADAPTER_NAME)
    ]
    print(
        f"\nserve-model at {server.url}: one generation engine for the base ({base_id!r}) and {ADAPTER_NAME!r}; "
        f"sending {len(payloads)} chat completions for both at once"
    )
    with ThreadPoolExecutor(len(payloads)) as pool:
        answers = list(pool.map(lambda p: _post_json(server.url + "/v1/chat/completions", p), payloads))
    report, ok = [], True
    for payload, answer in zip(payloads, answers, strict=True):
        served = answer["choices"][0]["message"]["content"]
        adapter = payload["model"] == ADAPTER_NAME
        prompt = generation_prompt(tokenizer, payload["messages"]).input_ids
        with model.adapter_setup(ADAPTER_NAME if adapter else None):
            offline = generate_answers(model, tokenizer, [prompt], batch_size=1, max_new_tokens=max_tokens)[0]
        equal = served == offline
        ok = ok and equal
        who = ADAPTER_NAME if adapter else "base"
        text = " ".join(payload["messages"][-1]["content"].split())[-50:]
        print(
            f"  {who:>8}: {served.strip()!r:28} (generate alone: {'equal' if equal else repr(offline)}) | ...{text}"
        )
        report.append({"model": payload["model"], "answer": served, "offline": offline, "equal": equal})
    print(
        f"{'every served answer equals' if ok else 'NOT every served answer equals'} generate on its prompt alone"
    )
    summary["served"] = {"url": server.url, "base_model": base_id, "requests": report, "all_equal": ok}
    return ok
