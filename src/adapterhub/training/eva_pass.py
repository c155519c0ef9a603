"""EVA in ``adapterhub train``: an ``adapter:lora[init=eva]`` adapter gets its data pass
(``model.initialize_eva``, docs/methods.md "Initialisations") over the first ``eva_batches`` training batches,
before the optimiser is built (the pass rebuilds the adapter with its new ranks)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from adapterhub.api.eva import language_model_positions, rows_at_positions
from adapterhub.errors import ConfigError
from adapterhub.training.evaluation import to_device
from adapterhub.training.modeling import forward_batch
from adapterhub.training.packing import EXAMPLES_KEY, TOKENS_KEY


def _token_positions(batch: Mapping[str, torch.Tensor], config: Any) -> torch.Tensor:
    """The default positions (attention mask, label mask), reading ``labels`` only when they are per token."""
    labels = batch.get("labels")
    if labels is not None and labels.shape != batch["input_ids"].shape:  # a class per row: no label mask
        batch = {k: v for k, v in batch.items() if k != "labels"}
    return language_model_positions(batch, config)


def initialise_eva(
    model: nn.Module,
    loader: DataLoader[Any],
    name: str,
    batches: int,
    *,
    kind: str,
    device: torch.device,
    world_size: int,
    with_head: bool,
) -> bool:
    """Run EVA's data pass for adapter ``name`` when its config has ``init="eva"`` (else nothing: False). Token
    batches (``input_ids (batch, seq)``) read the positions of the attention and label masks; other batches
    (media, multiple choice) every row of each target's input."""
    module = dict(model._adapterhub.adapters).get(name)  # type: ignore[union-attr,call-overload]
    if module is None or getattr(module.config, "init", None) != "eva":
        return False
    if world_size > 1:
        raise ConfigError(
            "init='eva' in a distributed run would give each process its own initialisation; run the EVA data pass "
            "in one process (model.initialize_eva, then save_adapter) and train from that adapter."
        )
    data = []
    for batch in itertools.islice(iter(loader), batches):
        batch = {k: v for k, v in batch.items() if k not in (EXAMPLES_KEY, TOKENS_KEY)}
        data.append(to_device(batch, device))
    tokens = kind != "multiple_choice" and all("input_ids" in b and b["input_ids"].dim() == 2 for b in data)
    model.initialize_eva(  # type: ignore[operator]
        name,
        data,
        forward_fn=lambda m, b: forward_batch(m, b, kind),
        prepare_model_inputs_fn=_token_positions if tokens else None,
        prepare_layer_inputs_fn=rows_at_positions if tokens else None,
    )
    model.train_adapter(name, train_head=with_head)  # type: ignore[operator]
    return True
