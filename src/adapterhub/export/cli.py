"""``adapterhub export onnx``: a model with adapters, a setup and a head as one ONNX file, checked and timed.

::

    adapterhub export onnx --model bert-base-uncased --adapter out/sst2 --output deploy/model.onnx
    adapterhub export onnx --model M --adapter a --adapter b --setup 'Stack("a", "b")' --output m.onnx --opset 18
    adapterhub export onnx --model M --adapter out/lora --merge lora --output m.onnx

Loads the model (``--model-class``) and its tokenizer, the adapters (directories or hub identifiers, with their
heads) and fusions, activates ``--setup`` (default: the only adapter), merges ``--merge`` adapters into the
weights, then ``adapterhub.export.export_onnx`` writes the file (verified with onnxruntime within ``--atol``) and
the tokenizer beside it, and prints the median time per batch of torch and of onnxruntime on the same inputs.
Only argparse and light modules are imported here; torch and transformers load inside the handler.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError

MODEL_FACTORIES = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
}


def register(subparsers: Any) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a model with its adapters and head for deployment (ONNX)",
        description="Export a model with its active adapter setup and head.",
    )
    formats = export.add_subparsers(dest="export_format", metavar="FORMAT")
    export.set_defaults(handler=lambda args: (export.print_help(), 0)[1])
    onnx = formats.add_parser(
        "onnx",
        help="write an ONNX file (dynamic batch and sequence axes) and the tokenizer beside it",
        description="Write the model with its adapters, setup and head as ONNX, check it against torch with "
        "onnxruntime and compare their speed on the same inputs.",
    )
    onnx.add_argument("--model", required=True, help="transformers model directory or name")
    onnx.add_argument("--model-class", choices=sorted(MODEL_FACTORIES), default="base")
    onnx.add_argument("--tokenizer", help="tokenizer directory or name (default: --model)")
    onnx.add_argument(
        "--adapter", action="append", default=[], help="adapter directory or hub identifier (repeat)"
    )
    onnx.add_argument("--fusion", action="append", default=[], type=Path, help="fusion directory (repeat)")
    onnx.add_argument("--setup", help='setup to export, e.g. \'Stack("a", "b")\' (default: the only adapter)')
    onnx.add_argument(
        "--merge", action="append", default=[], help="merge this adapter into the weights (repeat)"
    )
    onnx.add_argument("--output", required=True, type=Path, help="ONNX file to write")
    onnx.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    onnx.add_argument(
        "--text",
        action="append",
        default=[],
        help="example text to trace and time with (repeat; default: two)",
    )
    onnx.add_argument("--atol", type=float, default=1e-4, help="largest difference from torch accepted")
    onnx.add_argument("--batch-size", type=int, default=8, help="rows per timed batch (default 8)")
    onnx.add_argument("--iterations", type=int, default=10, help="timed calls of each runtime (0: no timing)")
    onnx.add_argument(
        "--threads", type=int, default=None, help="CPU threads of both runtimes (default: torch's)"
    )
    onnx.set_defaults(handler=_export_onnx)


def _tokenizer(name: str) -> Any:
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"No tokenizer could be loaded from {name!r} ({error}). Pass --tokenizer DIR (the model's tokenizer)."
        ) from None


def _choose_setup(args: argparse.Namespace, names: list[str], fusions: list[Any]) -> Any:
    if args.setup:
        from adapterhub.spec.composition import parse_setup

        return parse_setup(args.setup)
    if len(fusions) == 1 and not names:
        return fusions[0]
    if len(names) == 1 and not fusions:
        return names[0]
    if not names and not fusions:
        raise ConfigError("Give at least one --adapter (or a --fusion) to export.")
    loaded = [*names, *(repr(fuse) for fuse in fusions)]
    raise ConfigError(
        f"Several adapters or fusions are loaded ({', '.join(loaded)}); say what to export with --setup, e.g. "
        f"--setup 'Stack({', '.join(repr(n) for n in names)})'."
    )


def _quiet_exporter() -> None:
    """This process only: drop torch.onnx's notes that concern torchvision operators (not used here) and a
    deprecation warning from inside torch."""
    import logging
    import warnings

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


def _export_onnx(args: argparse.Namespace) -> int:
    import transformers

    from adapterhub.api.model import init
    from adapterhub.export.graph import EXAMPLE_TEXTS
    from adapterhub.export.onnx import compare_speed, export_onnx

    if args.text and len(args.text) < 2:
        raise ConfigError("Give at least two --text examples (a batch of one would fix the batch axis).")
    texts = list(args.text or EXAMPLE_TEXTS)
    _quiet_exporter()
    tokenizer = _tokenizer(args.tokenizer or args.model)
    factory = getattr(transformers, MODEL_FACTORIES[args.model_class])
    model: Any = init(factory.from_pretrained(args.model).eval())
    names = [model.load_adapter(source) for source in args.adapter]
    only_fusion = len(args.fusion) == 1 and not args.adapter and not args.setup
    # set_active also activates the head saved with the fusion
    fusions = [model.load_adapter_fusion(d, set_active=only_fusion) for d in args.fusion]
    setup = _choose_setup(args, names, fusions)
    model.set_active_adapters(setup)
    for name in args.merge:
        model.merge_adapter(name)
    example = tokenizer(texts, padding=True, return_tensors="pt")
    result = export_onnx(model, args.output, example, tokenizer=tokenizer, opset=args.opset, atol=args.atol)
    diffs = ", ".join(f"{name} {diff:.2g}" for name, diff in result.max_abs_diff.items())
    print(f"wrote {result.path} (opset {result.opset}); tokenizer in {result.tokenizer_dir}")
    print(f"setup {result.setup_json}, head {result.head or '(the model own output)'}")
    print(f"inputs {', '.join(result.input_names)} -> outputs {', '.join(result.output_names)}")
    print(f"onnxruntime vs torch, largest difference: {diffs}")
    if args.iterations > 0:
        rows = list(itertools.islice(itertools.cycle(texts), max(args.batch_size, 1)))
        inputs = dict(tokenizer(rows, padding=True, return_tensors="pt"))
        speed = compare_speed(model, result, inputs, iterations=args.iterations, threads=args.threads)
        shape = "x".join(str(n) for n in inputs["input_ids"].shape)
        print(
            f"speed on batch {shape}, {speed.threads} thread(s), median of {speed.iterations}: "
            f"torch {speed.torch_ms:.2f} ms, onnxruntime {speed.onnxruntime_ms:.2f} ms ({speed.speedup:.2f}x)"
        )
    return 0
