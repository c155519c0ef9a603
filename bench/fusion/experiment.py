"""The two-stage AdapterFusion experiment (Pfeiffer et al. 2020) on the shared data with a real encoder.

Stage 1: one Pfeiffer adapter + head per large source task (a seeded subsample of ``--source-examples`` each),
base frozen. Stage 2, per small target task and seed: (a) a single adapter on the target (ST-A), (b) AdapterFusion
over the source adapters and the target's own ST-A adapter (base and adapters frozen; fusion + new head trained,
the paper's "F. w/ ST-A"), (c) full fine-tuning. Reported: dev accuracy of the best epoch, mean ± std over seeds,
and the fusion heatmap of the first seed.

    OMP_NUM_THREADS=2 nohup .venv/bin/python bench/fusion/experiment.py --out bench/fusion/out/experiment \
        > bench/fusion/out/experiment.log 2>&1 &

The full-set run of docs/composition.md (every source row, one epoch, length-grouped source batches):

    OMP_NUM_THREADS=2 .venv/bin/python bench/fusion/experiment.py --out runs/fusion-full --source-examples 1000000 \
        --source-epochs 1 --source-dev 1000 --source-group-by-length --target-epochs 3

Results are appended to ``OUT/results.jsonl`` as each run finishes (a rerun skips finished runs and reuses the
saved source adapters), and ``OUT/results.md`` is rewritten after every run.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.utils.data import DataLoader

import adapterhub
from adapterhub.data import collate, encode, load_task
from adapterhub.data.packaged import packaged_encoder_path
from adapterhub.runtime.fusion import plot_fusion_heatmap
from adapterhub.spec.composition import Fuse
from adapterhub.training.loop import make_loader

SOURCES = ["multiemo_en", "vitaminc", "movie_dialog", "fever", "rotten_tomatoes"]
# target -> (train subsample or None for all, dev subsample or None): rotten_tomatoes is made "small" by
# subsampling, and is then left out of its own fusion's sources.
TARGETS = {"presuppositions_nli": (None, None), "rotten_tomatoes": (500, 1000)}


def subsample(rows: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or n >= len(rows):
        return list(rows)
    return random.Random(seed).sample(list(rows), n)


def loader(rows, tokenizer, kind, num_labels, batch_size, shuffle, seed, max_length, group_by_length=False):
    """Encoded ``rows`` in batches padded to their longest row. ``group_by_length`` (with ``shuffle``): the training
    loop's length-grouped batches (:func:`~adapterhub.training.loop.make_loader`), so long texts pad less. Without
    it, a seeded ``DataLoader`` shuffle, the order the published runs used (the loader's generator also draws its
    worker seed, so its order differs from ``make_loader``'s)."""
    data = encode(rows, tokenizer, kind=kind, max_length=max_length, num_labels=num_labels)
    if shuffle and group_by_length:
        return make_loader(data, tokenizer, batch_size, shuffle=True, seed=seed, group_by_length=True)
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=functools.partial(collate, tokenizer=tokenizer),
    )


def accuracy(model, dev_loader) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for batch in dev_loader:
            labels = batch.pop("labels")
            logits = model(**batch).logits
            right += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
    return right / max(total, 1)


def train(model, train_loader, dev_loader, *, lr: float, epochs: int, log: str) -> dict[str, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(steps, 1)))
    history, start = [], time.time()
    for epoch in range(epochs):
        model.train()
        for batch in train_loader:
            loss = model(**batch).loss  # includes the fusion regulariser while training a fusion
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        history.append(accuracy(model, dev_loader))
        print(
            f"  {log} epoch {epoch + 1}/{epochs}: dev acc {history[-1]:.4f} ({time.time() - start:.0f}s)",
            flush=True,
        )
    return {"best": max(history), "last": history[-1], "history": history, "seconds": time.time() - start}


def fresh_model(num_labels: int, seed: int):
    torch.manual_seed(seed)
    base = transformers.AutoModel.from_pretrained(packaged_encoder_path())
    return adapterhub.init(base)


def append_result(out: Path, row: dict[str, Any]) -> None:
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    write_table(out)


def read_results(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def write_table(out: Path) -> None:
    rows = read_results(out)
    lines = [
        "| target | method | seeds | dev accuracy (best epoch) mean ± std | per seed |",
        "|---|---|---|---|---|",
    ]
    for target in TARGETS:
        for method in ("single adapter", "fusion (F. w/ ST-A)", "full fine-tuning"):
            accs = [r["best"] for r in rows if r["target"] == target and r["method"] == method]
            if not accs:
                continue
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            per = ", ".join(f"{a * 100:.1f}" for a in accs)
            lines.append(
                f"| {target} | {method} | {len(accs)} | {statistics.mean(accs) * 100:.2f} ± {std * 100:.2f} | {per} |"
            )
    sources = [r for r in rows if r["method"] == "source adapter"]
    if sources:
        lines += ["", "| source adapter | train examples | dev accuracy |", "|---|---|---|"]
        lines += [f"| {r['target']} | {r['train']} | {r['best'] * 100:.1f} |" for r in sources]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def done(out: Path, target: str, method: str, seed: int) -> bool:
    return any(
        r["target"] == target and r["method"] == method and r["seed"] == seed for r in read_results(out)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench/fusion/out/experiment"))
    parser.add_argument("--source-examples", type=int, default=2000)
    parser.add_argument("--source-epochs", type=int, default=2)
    parser.add_argument("--source-max-length", type=int, default=128)
    parser.add_argument("--source-dev", type=int, default=500)
    parser.add_argument(
        "--source-group-by-length",
        action="store_true",
        help="train the source adapters on length-grouped batches (less padding; the targets keep random batches)",
    )
    parser.add_argument("--target-epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr-adapter", type=float, default=5e-4)
    parser.add_argument("--lr-fusion", type=float, default=2e-4)
    parser.add_argument("--lr-full", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.json").write_text(json.dumps(vars(args), default=str, indent=2) + "\n")
    tokenizer = transformers.AutoTokenizer.from_pretrained(packaged_encoder_path())
    make = functools.partial(loader, tokenizer=tokenizer, max_length=args.max_length)

    # ---- stage 1: source adapters
    for source in SOURCES:
        directory = out / "adapters" / source
        if (directory / "adapter_config.json").exists():
            continue
        task = load_task(source)
        n = len(task.labels)
        train_rows = subsample(task.train, args.source_examples, seed=0)
        dev_rows = subsample(task.dev, args.source_dev, seed=0)
        model = fresh_model(n, seed=0)
        model.add_adapter(source, config="pfeiffer")
        model.add_classification_head(source, num_labels=n)
        model.train_adapter(source)
        print(f"[source] {source}: {len(train_rows)} train, {n} labels", flush=True)
        result = train(
            model,
            loader(
                train_rows,
                tokenizer,
                task.kind,
                n,
                32,
                True,
                0,
                args.source_max_length,
                group_by_length=args.source_group_by_length,
            ),
            loader(dev_rows, tokenizer, task.kind, n, 64, False, 0, args.source_max_length),
            lr=args.lr_adapter,
            epochs=args.source_epochs,
            log=source,
        )
        model.save_adapter(directory, source)
        append_result(
            out, {"target": source, "method": "source adapter", "seed": 0, "train": len(train_rows), **result}
        )

    # ---- stage 2: targets
    for seed in args.seeds:
        for target in args.targets:
            n_train, n_dev = TARGETS[target]
            task = load_task(target)
            n = len(task.labels)
            train_rows = subsample(task.train, n_train, seed=1000)  # the same small set for every seed
            dev_rows = subsample(task.dev, n_dev, seed=1000)
            train_loader = make(
                train_rows, kind=task.kind, num_labels=n, batch_size=args.batch_size, shuffle=True, seed=seed
            )
            dev_loader = make(dev_rows, kind=task.kind, num_labels=n, batch_size=64, shuffle=False, seed=0)
            st_name = f"st-{target}"
            st_dir = out / "targets" / f"{target}-seed{seed}"
            print(f"[target] {target} seed {seed}: {len(train_rows)} train / {len(dev_rows)} dev", flush=True)
            if not done(out, target, "single adapter", seed) or not (st_dir / "adapter_config.json").exists():
                model = fresh_model(n, seed)
                model.add_adapter(st_name, config="pfeiffer")
                model.add_classification_head(st_name, num_labels=n)
                model.train_adapter(st_name)
                result = train(
                    model, train_loader, dev_loader, lr=args.lr_adapter, epochs=args.target_epochs, log="ST-A"
                )
                model.save_adapter(st_dir, st_name, with_head=False)
                if not done(out, target, "single adapter", seed):
                    append_result(
                        out,
                        {
                            "target": target,
                            "method": "single adapter",
                            "seed": seed,
                            "train": len(train_rows),
                            **result,
                        },
                    )
            if not done(out, target, "fusion (F. w/ ST-A)", seed):
                model = fresh_model(n, seed)
                sources = [s for s in SOURCES if s != target]
                for source in sources:
                    model.load_adapter(out / "adapters" / source, with_head=False)
                model.load_adapter(st_dir, with_head=False)
                fuse = Fuse(*sources, st_name)
                model.add_adapter_fusion(fuse, config="dynamic")
                model.add_classification_head("fusion-head", num_labels=n)
                model.train_adapter_fusion(fuse, head="fusion-head")
                result = train(
                    model,
                    train_loader,
                    dev_loader,
                    lr=args.lr_fusion,
                    epochs=args.target_epochs,
                    log="fusion",
                )
                if seed == args.seeds[0]:
                    activations = model.fusion_activations(dev_rows, tokenizer, max_length=args.max_length)
                    activations.save_json(out / f"activations-{target}.json")
                    plot_fusion_heatmap(
                        activations,
                        out / f"heatmap-{target}.png",
                        title=f"AdapterFusion weights on {target} (dev)",
                    )
                    model.save_adapter_fusion(
                        out / "fusions" / target, fuse, with_head="fusion-head", with_adapters=False
                    )
                append_result(
                    out,
                    {
                        "target": target,
                        "method": "fusion (F. w/ ST-A)",
                        "seed": seed,
                        "train": len(train_rows),
                        **result,
                    },
                )
            if not done(out, target, "full fine-tuning", seed):
                torch.manual_seed(seed)
                model = fresh_model(n, seed)
                model.add_classification_head("full", num_labels=n)
                model.active_head = "full"
                for p in model.parameters():
                    p.requires_grad_(True)
                result = train(
                    model, train_loader, dev_loader, lr=args.lr_full, epochs=args.target_epochs, log="full FT"
                )
                append_result(
                    out,
                    {
                        "target": target,
                        "method": "full fine-tuning",
                        "seed": seed,
                        "train": len(train_rows),
                        **result,
                    },
                )
    print("done", flush=True)


if __name__ == "__main__":
    main()
