"""Sub-commands for composition and AdapterFusion.

``adapterhub fusion-heatmap ACTIVATIONS.json -o heatmap.png``: draw the Figure 4/6 heatmap from saved activations
(``FusionActivations.save_json``).

``adapterhub fusion-activations --model DIR --fusion DIR (--task NAME | --texts FILE) -o acts.json [--png out.png]``:
load a transformers model, the fusion (with the adapters saved alongside it, or ``--adapter DIR`` for each), and
compute the mean fusion weight per (layer, adapter) over the texts (one per line) or the task's dev set.

``adapterhub setup-json 'Stack("lang", Fuse("a", "b"))'``: check a setup and print it as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.spec.composition import parse_setup


def register(subparsers: Any) -> None:
    heat = subparsers.add_parser(
        "fusion-heatmap",
        help="draw the AdapterFusion heatmap (layers x adapters) from activations JSON",
        description="Draw the AdapterFusion weights heatmap (the paper's Figure 4/6) from a JSON file written by "
        "FusionActivations.save_json or `adapterhub fusion-activations`.",
    )
    heat.add_argument("activations", type=Path, help="activations JSON")
    heat.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    heat.add_argument("--title", default=None)
    heat.add_argument("--no-annotate", action="store_true", help="leave the cells without numbers")
    heat.set_defaults(handler=_heatmap)

    acts = subparsers.add_parser(
        "fusion-activations",
        help="mean AdapterFusion weight per (layer, adapter) over some texts",
        description="Compute the mean softmax weight per (layer, adapter) of a saved fusion over a task's dev set "
        "or a text file, write it as JSON and optionally as a heatmap PNG.",
    )
    acts.add_argument(
        "--model", required=True, help="transformers model directory or name (also the tokenizer)"
    )
    acts.add_argument("--fusion", type=Path, required=True, help="fusion directory (save_adapter_fusion)")
    acts.add_argument(
        "--adapter", type=Path, action="append", default=[], help="adapter directory (repeatable)"
    )
    source = acts.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="task name or folder (adapterhub.data.load_task); its dev set is used")
    source.add_argument("--texts", type=Path, help="text file, one example per line")
    acts.add_argument("--limit", type=int, default=1000, help="at most this many examples (default 1000)")
    acts.add_argument("--batch-size", type=int, default=32)
    acts.add_argument("--max-length", type=int, default=128)
    acts.add_argument("-o", "--out", type=Path, required=True, help="activations JSON to write")
    acts.add_argument("--png", type=Path, default=None, help="also write the heatmap here")
    acts.set_defaults(handler=_activations)

    setup = subparsers.add_parser(
        "setup-json",
        help="validate a composition setup and print it as JSON",
        description="Parse a setup written like Python (Stack('lang', Fuse('a', 'b'))), validate it and print JSON.",
    )
    setup.add_argument("setup")
    setup.set_defaults(handler=_setup_json)


def _heatmap(args: argparse.Namespace) -> int:
    from adapterhub.runtime.fusion import FusionActivations, plot_fusion_heatmap

    if not args.activations.is_file():
        raise ConfigError(f"{args.activations} does not exist.")
    try:
        activations = FusionActivations.load_json(args.activations)
    except (ValueError, KeyError) as error:
        raise ConfigError(f"{args.activations} is not an activations JSON ({error}).") from None
    path = plot_fusion_heatmap(activations, args.out, title=args.title, annotate=not args.no_annotate)
    print(path)
    return 0


def _activations(args: argparse.Namespace) -> int:
    import transformers

    import adapterhub
    from adapterhub.runtime.fusion import plot_fusion_heatmap

    model = adapterhub.init(transformers.AutoModel.from_pretrained(args.model).eval())
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    for directory in args.adapter:
        model.load_adapter(directory, with_head=False)
    fuse = model.load_adapter_fusion(args.fusion, with_head=False)
    if args.task:
        from adapterhub.data import load_task

        rows: list[Any] = list(load_task(args.task).dev)[: args.limit]
    else:
        rows = [line for line in args.texts.read_text(encoding="utf-8").splitlines() if line.strip()][
            : args.limit
        ]
    activations = model.fusion_activations(
        rows, tokenizer, fusion=fuse, batch_size=args.batch_size, max_length=args.max_length
    )
    activations.save_json(args.out)
    print(activations)
    if args.png:
        plot_fusion_heatmap(activations, args.png)
    return 0


def _setup_json(args: argparse.Namespace) -> int:
    from adapterhub.spec.composition import setup_to_json

    sys.stdout.write(setup_to_json(parse_setup(args.setup)) + "\n")
    return 0
