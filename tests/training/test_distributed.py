"""Two CPU processes (gloo) under torchrun end with bit-identical adapter weights, different from the start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_processes_end_with_identical_adapters(tmp_path, tiny_model_dir, sentiment_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        str(tiny_model_dir),
        str(sentiment_dir),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and any(k.startswith("adapters.") for k in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"

    # the start: the same seeded preparation train() does, in this process
    import transformers

    from adapterhub.data import load_task
    from adapterhub.training.modeling import HeadSettings, prepare_model

    start_model = transformers.AutoModel.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(5)
    start_model = prepare_model(
        start_model, load_task(sentiment_dir), "adapter:pfeiffer[reduction_factor=2]", "task", HeadSettings()
    )
    start = start_model._adapterhub.state_dict()
    assert start.keys() == rank0.keys()
    changed = [k for k in start if not torch.equal(start[k], rank0[k])]
    assert any(k.startswith("adapters.") for k in changed) and any(k.startswith("heads.") for k in changed)

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["environment"]["world_size"] == 2 and results["status"] == "completed"
    # 64 examples, 2 ranks, batch 4 per rank: 8 updates per epoch
    assert results["steps"] == 16
