"""One library's side of ``bench/train/throughput.py``: builds the models once, then times training bursts on
request. Runs under ``.venv`` (``--lib adapterhub``) or ``.venv-adapters`` (``--lib adapters``) and imports only
that library, torch and transformers.

Protocol (JSON lines): reads ``{"method": NAME}`` on stdin, trains NAME for one pass over the shared batches and
writes ``{"method": NAME, "examples": N, "seconds": S}``; ``{"quit": true}`` ends it. It first writes
``{"ready": [names...], "versions": {...}}``.

Methods:
* ``full``: plain ``AutoModelForSequenceClassification``, every parameter trained (the baseline of both sides);
* ``adapter``: the library's documented way to train a Pfeiffer rf-16 adapter with a 2-layer classification head:
  adapterhub: bare ``AutoModel`` + ``add_head(..., "classification")`` + ``add_adapter`` + ``train_adapter``;
  adapters: ``AutoAdapterModel`` + ``add_classification_head`` + ``add_adapter("seq_bn")`` + ``train_adapter``;
* ``adapter-static`` (adapterhub only): the "two extra lines" path, ``AutoModelForSequenceClassification`` +
  ``adapterhub.init`` + ``add_adapter`` + ``train_adapter``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
import transformers


def build_full(model_dir: str, num_labels: int) -> torch.nn.Module:
    return transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)


def build_ours(model_dir: str, num_labels: int, static: bool) -> torch.nn.Module:
    import adapterhub

    if static:
        model = adapterhub.init(build_full(model_dir, num_labels))
        model.add_adapter("rt", config="pfeiffer[reduction_factor=16]")
        model.train_adapter("rt")
        return model
    model = adapterhub.init(transformers.AutoModel.from_pretrained(model_dir))
    model.add_head("rt", "classification", num_labels=num_labels, layers=2)
    model.add_adapter("rt", config="pfeiffer[reduction_factor=16]")
    model.train_adapter("rt")
    return model


def build_theirs(model_dir: str, num_labels: int) -> torch.nn.Module:
    import adapters

    model = adapters.AutoAdapterModel.from_pretrained(model_dir)
    model.add_classification_head("rt", num_labels=num_labels, layers=2)
    model.add_adapter("rt", config="seq_bn")
    model.train_adapter("rt")
    model.set_active_adapters("rt")
    return model


def versions(lib: str) -> dict[str, str]:
    found = {"torch": torch.__version__, "transformers": transformers.__version__}
    module = __import__("adapterhub" if lib == "adapterhub" else "adapters")
    found[lib] = getattr(module, "__version__", "?")
    return found


def train_pass(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict[str, torch.Tensor]]
) -> int:
    """One update per batch (forward with labels, backward, AdamW step); returns the number of examples."""
    model.train()
    examples = 0
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        examples += int(batch["labels"].shape[0])
    return examples


def worker_arguments(description: str | None, batches_help: str) -> argparse.ArgumentParser:
    """The options every worker takes: which library, the model folder, the saved batches, CPU threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--lib", choices=("adapterhub", "adapters"), required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--batches", required=True, help=batches_help)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main() -> None:
    parser = worker_arguments(__doc__, "torch.save'd list of batches (from throughput.py)")
    parser.add_argument("--full-lr", type=float, default=2e-5)
    parser.add_argument("--adapter-lr", type=float, default=1e-3)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    batches: list[dict[str, torch.Tensor]] = torch.load(args.batches)
    num_labels = int(max(int(b["labels"].max()) for b in batches)) + 1
    builders: dict[str, Any] = {"full": lambda: build_full(args.model_dir, num_labels)}
    if args.lib == "adapterhub":
        builders["adapter"] = lambda: build_ours(args.model_dir, num_labels, static=False)
        builders["adapter-static"] = lambda: build_ours(args.model_dir, num_labels, static=True)
    else:
        builders["adapter"] = lambda: build_theirs(args.model_dir, num_labels)
    prepared: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build()
        params = [p for p in model.parameters() if p.requires_grad]
        lr = args.full_lr if name == "full" else args.adapter_lr
        prepared[name] = (model, torch.optim.AdamW(params, lr=lr))
    print(json.dumps({"ready": list(prepared), "versions": versions(args.lib)}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        name = request["method"]
        model, optimizer = prepared[name]
        started = time.perf_counter()
        examples = train_pass(model, optimizer, batches)
        seconds = time.perf_counter() - started
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        reply = {"method": name, "examples": examples, "seconds": seconds, "trainable": trainable}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
