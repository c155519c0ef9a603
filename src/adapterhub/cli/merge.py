"""``adapterhub merge``: combine saved adapters into one (``model.average_adapter``) and save the result.

::

    adapterhub merge --model bert-base-uncased --adapter out/a --adapter out/b --weights 0.5 0.5 \\
        --combine linear --output out/ab

The adapters may be in any layout ``load_adapter`` reads (ours, the `adapters` library's, peft's); ``--layout``
chooses the layout written. Flexible heads of the same type and shape are averaged with the adapters.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.spec.combines import COMBINES

MODEL_CLASSES = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "token-classification": "AutoModelForTokenClassification",
}


def register(subparsers: Any) -> None:
    merge = subparsers.add_parser(
        "merge",
        help="combine saved adapters (weighted sum, SVD, TIES, DARE) into one and save it",
        description="Load adapters into a model, combine them with model.average_adapter and save the result.",
    )
    merge.add_argument("--model", required=True, help="model name or directory the adapters were made for")
    merge.add_argument("--model-class", choices=sorted(MODEL_CLASSES), default="base")
    merge.add_argument(
        "--adapter", action="append", required=True, type=Path, help="an adapter directory (repeat)"
    )
    merge.add_argument("--weights", nargs="+", type=float, help="one weight per adapter (default: equal)")
    merge.add_argument("--combine", choices=COMBINES, default="linear")
    merge.add_argument("--density", type=float, help="share of entries kept (ties, dare_*, magnitude_prune)")
    merge.add_argument("--svd-rank", type=int, help="rank of the result for the *svd combinations")
    merge.add_argument("--seed", type=int, help="seed for DARE's random masks")
    merge.add_argument("--name", default="merged", help="name of the combined adapter")
    merge.add_argument(
        "--output", required=True, type=Path, help="directory to write the combined adapter to"
    )
    merge.add_argument("--layout", choices=("adapterhub", "adapters", "peft"), default="adapterhub")
    merge.add_argument("--no-head", action="store_true", help="leave heads out (load and save)")
    merge.set_defaults(handler=_merge)


def _merge(args: argparse.Namespace) -> int:
    import transformers

    import adapterhub

    if args.weights is not None and len(args.weights) != len(args.adapter):
        raise ConfigError(
            f"--weights has {len(args.weights)} values for {len(args.adapter)} --adapter directories."
        )
    factory = getattr(transformers, MODEL_CLASSES[args.model_class])
    model: Any = adapterhub.init(factory.from_pretrained(args.model).eval())
    names = [
        model.load_adapter(directory, load_as=f"input{i}", with_head=not args.no_head)
        for i, directory in enumerate(args.adapter)
    ]
    model.average_adapter(
        args.name,
        names,
        args.weights,
        combine=args.combine,
        density=args.density,
        svd_rank=args.svd_rank,
        seed=args.seed,
        average_head=not args.no_head,
    )
    path = model.save_adapter(args.output, args.name, with_head=not args.no_head, layout=args.layout)
    print(path)
    return 0
