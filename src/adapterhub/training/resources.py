"""Seeds, devices, precision and peak-memory measurement for training runs."""

from __future__ import annotations

import contextlib
import random
import resource
import sys
from pathlib import Path

import numpy as np
import torch

from adapterhub.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: ``None`` means plain fp32.

    ``auto``: bf16 on a CUDA device that supports it, fp32 elsewhere (CPU autocast is slower than fp32 on most
    CPUs, so it is only used when asked for). ``bf16``: bf16 autocast on CUDA (if supported) or CPU."""
    if precision == "fp32":
        return None
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if cuda_bf16 else None
    if device.type == "cuda" and not cuda_bf16:
        raise ConfigError("precision=bf16: this GPU does not support bfloat16; use --precision fp32.")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class PeakMemory:
    """Peak memory of the run: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set size
    (``VmHWM``, reset at the start where Linux allows it, else ``ru_maxrss`` since the process started) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss"
        self.reset_worked = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.reset_worked = True
        except OSError:
            self.reset_worked = False
        if not self.reset_worked:
            self.kind = "rss_since_process_start"

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
