"""Packed rows with transformers' block-diagonal mask against attention per segment, and unpacked: train tokens/s
of forward + backward, in one run.

    .venv/bin/python bench/train/packed_attention.py                         # defaults below (a GPU helps)
    .venv/bin/python bench/train/packed_attention.py --model smollm2         # the packaged SmolLM2-135M-Instruct
    .venv/bin/python bench/train/packed_attention.py --layers 2 --hidden 128 --steps 2 --rounds 1  # smoke run

Settings: a random Llama (``--hidden`` 512, ``--layers`` 8, 8 heads, 4 key/value heads, ``--vocab`` 8192) or
``--model`` (a causal LM folder, or ``smollm2``), ``attn_implementation="sdpa"``, a LoRA adapter
(``adapter:lora``), ``--dtype`` (bfloat16 on a GPU, float32 on CPU), ``--batch-size`` 16 synthetic examples per
step of ``--min-tokens``..``--max-tokens`` tokens (uniform, seeded; the last 5 carry loss), rows of at most
``--max-length`` 1024 tokens. Modes, on the same examples:

* ``unpacked``: each example padded to the batch's longest, with an attention mask (``collate_chat``);
* ``packed_mask``: ``collate_packed`` rows, no attention mask: transformers builds the dense (rows, 1, T, T)
  block-diagonal mask and SDPA runs with it;
* ``packed_segments``: the same rows with ``cu_seq_lens_q`` (``packed_step``): attention per segment
  (``adapterhub.runtime.packed_attention``).

A step is forward (``generation_loss``, chunked LM-head loss) + backward + ``zero_grad``; no optimizer step (the
parameters stay as they are, so every mode sees the same model). One warm-up step per mode is not timed; the modes
then alternate for ``--rounds`` rounds of ``--steps`` steps and the median of each mode's rounds is kept. Tokens/s
counts real tokens (padding excluded). On a GPU, peak memory per mode is ``torch.cuda.max_memory_allocated`` over
its timed steps minus the memory allocated before them; on CPU no memory is reported (see
``bench/train/packing.py`` for per-process CPU peaks). Writes ``--output`` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
MODES = ("unpacked", "packed_mask", "packed_segments")


class IdTokenizer:
    """The two attributes the collators read."""

    pad_token_id = 0
    eos_token_id = 0


def make_batches(args: argparse.Namespace, vocab: int) -> list[list[dict[str, Any]]]:
    """``steps + 1`` batches of ``batch_size`` seeded synthetic examples (features as ``encode_chat`` makes)."""
    rng = random.Random(args.seed)
    batches = []
    for _ in range(args.steps + 1):
        batch = []
        for _ in range(args.batch_size):
            n = rng.randint(args.min_tokens, args.max_tokens)
            ids = [rng.randrange(3, vocab) for _ in range(n)]
            batch.append(
                {"input_ids": ids, "attention_mask": [1] * n, "labels": [-100] * (n - 5) + ids[n - 5 :]}
            )
        batches.append(batch)
    return batches


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    from adapterhub.data.task import TaskData
    from adapterhub.training.modeling import HeadSettings, prepare_model

    torch.manual_seed(args.seed)
    if args.model:
        path = args.model
        if path == "smollm2":
            from adapterhub.data.packaged import packaged_decoder_path

            path = str(packaged_decoder_path())
        base = transformers.AutoModelForCausalLM.from_pretrained(
            path, attn_implementation="sdpa", dtype=dtype
        )
    else:
        config = transformers.LlamaConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            intermediate_size=args.hidden * 8 // 3,
            num_hidden_layers=args.layers,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=args.max_length,
            pad_token_id=0,
        )
        base = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    task = TaskData("bench", "generation", (), (), ())
    return prepare_model(base, task, "adapter:lora", "task", HeadSettings()).to(device).train()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from adapterhub.training.chat_batches import collate_chat
    from adapterhub.training.lm_loss import generation_loss
    from adapterhub.training.packing import EXAMPLES_KEY, TOKENS_KEY, collate_packed, packed_step

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {
        "auto": torch.bfloat16 if cuda else torch.float32,
        "bf16": torch.bfloat16,
        "fp32": torch.float32,
    }[args.dtype]
    model = build_model(args, device, dtype)
    batches = make_batches(args, int(model.config.vocab_size))
    tokenizer = IdTokenizer()
    collated = {
        "unpacked": [collate_chat(b, tokenizer) for b in batches],
        "packed_mask": [collate_packed(b, tokenizer, args.max_length) for b in batches],
    }
    collated["packed_segments"] = collated["packed_mask"]
    tokens = sum(len(item["input_ids"]) for b in batches[1:] for item in b)

    def step(batch: dict[str, torch.Tensor], per_segment: bool) -> None:
        batch = {k: v.to(device) for k, v in batch.items() if k not in (EXAMPLES_KEY, TOKENS_KEY)}
        with packed_step(model, batch, per_segment):
            generation_loss(model, batch).backward()
        model.zero_grad(set_to_none=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for mode in MODES:  # warm-up
        step(collated[mode][0], mode == "packed_segments")
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    peaks: dict[str, list[int]] = {mode: [] for mode in MODES}
    for round_index in range(args.rounds):
        order = MODES if round_index % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            sync()
            before = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            tick = time.perf_counter()
            for batch in collated[mode][1:]:
                step(batch, mode == "packed_segments")
            sync()
            seconds[mode].append(time.perf_counter() - tick)
            if cuda:
                peaks[mode].append(torch.cuda.max_memory_allocated() - before)
    summary = {
        mode: {
            "tokens_per_second": tokens / statistics.median(seconds[mode]),
            "peak_memory_bytes": statistics.median(peaks[mode]) if peaks[mode] else None,
            "rows_per_step": statistics.mean(int(c["input_ids"].shape[0]) for c in collated[mode][1:]),
            "width": statistics.mean(int(c["input_ids"].shape[1]) for c in collated[mode][1:]),
        }
        for mode in MODES
    }
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": str(dtype),
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="a causal LM folder, or smollm2 (default: a random Llama)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--min-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "bench/train/results/packed_attention.json"))
    args = parser.parse_args()
    result = run(args)
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"settings": settings, **result}, indent=2))
    base = result["summary"]["unpacked"]["tokens_per_second"]
    print(f"{result['device']}, {result['dtype']}\n")
    print("| mode | rows x width | tokens/s | vs unpacked | peak memory (MiB) |\n|---|---|---|---|---|")
    for mode, s in result["summary"].items():
        peak = "-" if s["peak_memory_bytes"] is None else f"{s['peak_memory_bytes'] / 2**20:.1f}"
        print(
            f"| {mode} | {s['rows_per_step']:.1f} x {s['width']:.0f} | {s['tokens_per_second']:.0f} | "
            f"x{s['tokens_per_second'] / base:.2f} | {peak} |"
        )


if __name__ == "__main__":
    main()
