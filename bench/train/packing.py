"""Packed against unpacked training of the generation kind, tokens/s and peak memory, in one run.

    .venv/bin/python bench/train/packing.py                      # defaults below
    .venv/bin/python bench/train/packing.py --rounds 1 --steps 3  # quick look

Settings: a small random Llama (``--hidden`` 256, ``--layers`` 4, 4 heads, 2 key/value heads, ``--vocab`` 8192,
float32) with a LoRA adapter (``adapter:lora``), ``--batch-size`` 16 examples per step, synthetic conversations
of ``--min-tokens``..``--max-tokens`` tokens (uniform, seeded) whose last 5 tokens carry loss, rows of at most
``--max-length`` 256 tokens, ``--threads`` 2, AdamW lr 1e-3. Both modes train on the same batches of examples
(unpacked: each padded to the batch's longest, as the training loop does without ``--packing``; packed:
:func:`adapterhub.training.packing.collate_packed`, as it does with it).

Each measurement runs in a fresh process (``--mode``), so that peak memory is that mode's own: the peak
resident set size during the timed steps minus the resident size before the first step (CPU), or
``torch.cuda.max_memory_allocated`` on a GPU. One warm-up step is not timed. Modes alternate over ``--rounds``
rounds and the median is kept. Tokens/s counts real tokens (padding excluded) in both modes.

Writes ``--output`` (JSON) and prints a markdown table with the packed/unpacked ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


class IdTokenizer:
    """The two attributes the collators read."""

    pad_token_id = 0
    eos_token_id = 0


def make_batches(args: argparse.Namespace) -> list[list[dict[str, Any]]]:
    """``steps + 1`` batches of ``batch_size`` seeded synthetic examples (features as ``encode_chat`` makes)."""
    rng = random.Random(args.seed)
    batches = []
    for _ in range(args.steps + 1):
        batch = []
        for _ in range(args.batch_size):
            n = rng.randint(args.min_tokens, args.max_tokens)
            ids = [rng.randrange(3, args.vocab) for _ in range(n)]
            labels = [-100] * (n - 5) + ids[n - 5 :]
            batch.append({"input_ids": ids, "attention_mask": [1] * n, "labels": labels})
        batches.append(batch)
    return batches


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``steps`` timed steps (after one warm-up step) in ``args.mode``; tokens/s and peak memory."""
    import transformers

    from adapterhub.data.task import TaskData
    from adapterhub.training.chat_batches import collate_chat
    from adapterhub.training.modeling import HeadSettings, forward_batch, prepare_model
    from adapterhub.training.packing import EXAMPLES_KEY, TOKENS_KEY, collate_packed
    from adapterhub.training.resources import PeakMemory

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=args.max_length,
        pad_token_id=0,
    )
    base = transformers.AutoModelForCausalLM.from_config(config)
    task = TaskData("bench", "generation", (), (), ())
    model = prepare_model(base, task, "adapter:lora", "task", HeadSettings()).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    tokenizer = IdTokenizer()
    batches = make_batches(args)
    if args.mode == "packed":
        collated = [collate_packed(b, tokenizer, args.max_length) for b in batches]
    else:
        collated = [collate_chat(b, tokenizer) for b in batches]
    tokens = sum(len(item["input_ids"]) for b in batches[1:] for item in b)
    slots = sum(int(c["input_ids"].numel()) for c in collated[1:])

    def step(batch: dict[str, torch.Tensor]) -> None:
        batch = {k: v.to(device) for k, v in batch.items() if k not in (EXAMPLES_KEY, TOKENS_KEY)}
        loss, _ = forward_batch(model, batch, "generation")
        assert loss is not None
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(collated[0])  # warm-up
    memory = PeakMemory(device)
    before = _rss() if device.type == "cpu" else 0
    memory.start()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    tick = time.perf_counter()
    for batch in collated[1:]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tick
    return {
        "mode": args.mode,
        "tokens_per_second": tokens / seconds,
        "padding_fraction": 1 - tokens / slots,
        "peak_memory_bytes": memory.peak_bytes() - before,
        "memory_kind": memory.kind,
        "device": str(device),
    }


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("packed", "unpacked"), help="(internal) measure one mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--min-tokens", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "bench/train/results/packing.json"))
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    settings = {k: v for k, v in vars(args).items() if k not in ("mode", "output")}
    passed = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    runs: dict[str, list[dict[str, Any]]] = {"unpacked": [], "packed": []}
    for _ in range(args.rounds):
        for mode in runs:
            out = subprocess.run(
                [sys.executable, __file__, *passed, "--mode", mode],
                check=True,
                capture_output=True,
                text=True,
            )
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {
        mode: {
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in rs),
            "peak_memory_bytes": statistics.median(r["peak_memory_bytes"] for r in rs),
            "padding_fraction": rs[0]["padding_fraction"],
            "memory_kind": rs[0]["memory_kind"],
            "device": rs[0]["device"],
        }
        for mode, rs in runs.items()
    }
    ratios = {
        "tokens_per_second": summary["packed"]["tokens_per_second"]
        / summary["unpacked"]["tokens_per_second"],
        "peak_memory": summary["packed"]["peak_memory_bytes"]
        / max(1, summary["unpacked"]["peak_memory_bytes"]),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps({"settings": settings, "summary": summary, "ratios": ratios}, indent=2)
    )
    print("| mode | tokens/s | peak memory (MiB) | padding |\n|---|---|---|---|")
    for mode, s in summary.items():
        print(
            f"| {mode} | {s['tokens_per_second']:.0f} | {s['peak_memory_bytes'] / 2**20:.1f} | "
            f"{s['padding_fraction']:.1%} |"
        )
    print(
        f"\npacked/unpacked: tokens/s x{ratios['tokens_per_second']:.2f}, peak memory "
        f"x{ratios['peak_memory']:.2f} ({summary['packed']['memory_kind']}, {summary['packed']['device']})"
    )


if __name__ == "__main__":
    main()
