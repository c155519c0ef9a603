"""What a training loop asks the adapters it trains, through the method protocol (``AdapterModule.training_loss`` and
``AdapterModule.after_optimizer_step``), never by their class: a term added to each batch's loss (AdaLoRA's
orthogonal regulariser) and a call after each optimizer step while its gradients are held (AdaLoRA's rank
allocation, peft's ``update_and_allocate``). Methods without either answer None / do nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from adapterhub.methods.base import AdapterModule


def trained_adapters(model: Any) -> list[AdapterModule]:
    """The adapters of an adapterhub model with a parameter that trains (``requires_grad``); none for a model
    without adapterhub's store."""
    store = getattr(model, "_adapterhub", None)
    if store is None:
        return []
    return [m for m in store.adapters.values() if any(p.requires_grad for p in m.parameters())]


def with_adapter_losses(loss: torch.Tensor, adapters: Sequence[AdapterModule]) -> torch.Tensor:
    """``loss`` plus every ``training_loss()`` of ``adapters`` that is not None."""
    for adapter in adapters:
        term = adapter.training_loss()
        if term is not None:
            loss = loss + term.to(loss.dtype)
    return loss


def after_optimizer_step(adapters: Sequence[AdapterModule], step: int, total_steps: int) -> None:
    """Tell ``adapters`` that optimizer step ``step`` (1-based) of ``total_steps`` is done; call it before the
    gradients are zeroed."""
    for adapter in adapters:
        adapter.after_optimizer_step(step, total_steps)
