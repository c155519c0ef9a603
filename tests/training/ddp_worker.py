"""Run by test_distributed.py under ``torchrun --nproc_per_node 2``: train an adapter with DDP (gloo) and save
this rank's adapter and head weights to OUT/rank<R>.safetensors."""

from __future__ import annotations

import os
import sys

import torch
import transformers
from safetensors.torch import save_file

from adapterhub.data import load_task
from adapterhub.training import TrainConfig, train


def main(model_dir: str, data_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModel.from_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    config = TrainConfig(
        method="adapter:pfeiffer[reduction_factor=2]",
        epochs=2,
        batch_size=4,
        max_length=16,
        learning_rate=1e-2,
        seed=5,
        progress=False,
        restore_best=False,
        output_dir=os.path.join(out_dir, "run"),
    )
    train(model, load_task(data_dir), config, tokenizer=tokenizer)
    state = {k: v.contiguous() for k, v in model._adapterhub.state_dict().items()}
    save_file(state, os.path.join(out_dir, f"rank{os.environ['RANK']}.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
