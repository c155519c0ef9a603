"""The data-driven LoRA inits in ``adapterhub train``: an ``adapter:lora[init=eva]``, ``[init=corda]`` or
``[init=lora_ga]`` adapter gets its data pass (``model.initialize_eva`` / ``initialize_corda`` /
``initialize_lora_ga``, docs/methods.md "Initialisations") over the first ``init_batches`` training batches, before
the optimiser is built (EVA rebuilds the adapter with its new ranks; CorDA and LoRA-GA write ``A``, ``B`` and the
residual base)."""

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

PASSES = ("eva", "corda", "lora_ga")  # the inits whose data pass this runs


def _token_positions(batch: Mapping[str, torch.Tensor], config: Any) -> torch.Tensor:
    """The default positions (attention mask, label mask), reading ``labels`` only when they are per token."""
    labels = batch.get("labels")
    if labels is not None and labels.shape != batch["input_ids"].shape:  # a class per row: no label mask
        batch = {k: v for k, v in batch.items() if k != "labels"}
    return language_model_positions(batch, config)


def initialise_from_data(
    model: nn.Module,
    loader: DataLoader[Any],
    name: str,
    batches: int,
    *,
    kind: str,
    device: torch.device,
    world_size: int,
    with_head: bool,
) -> str | None:
    """Run the data pass of adapter ``name`` when its config has a data init (``PASSES``; returns that init), else
    nothing (None). EVA: token batches (``input_ids (batch, seq)``) read the positions of the attention and label
    masks; other batches (media, multiple choice) every row of each target's input. CorDA: every row of each
    target's input in each batch (as peft's hook). LoRA-GA: the training loss of each batch (``forward_batch``)."""
    module = dict(model._adapterhub.adapters).get(name)  # type: ignore[union-attr,call-overload]
    init = getattr(module.config, "init", None) if module is not None else None
    if init not in PASSES:
        return None
    if world_size > 1:
        raise ConfigError(
            f"init={init!r} in a distributed run would give each process its own initialisation; run the data pass "
            f"in one process (model.initialize_{init}, then save_adapter) and train from that adapter."
        )
    data = []
    for batch in itertools.islice(iter(loader), batches):
        batch = {k: v for k, v in batch.items() if k not in (EXAMPLES_KEY, TOKENS_KEY)}
        data.append(to_device(batch, device))

    def forward(m: Any, b: Any) -> Any:
        return forward_batch(m, b, kind)

    if init == "corda":
        model.initialize_corda(name, data, forward_fn=forward)  # type: ignore[operator]
    elif init == "lora_ga":
        model.initialize_lora_ga(name, data, loss_fn=lambda m, b: forward(m, b)[0])  # type: ignore[operator]
    else:
        tokens = kind != "multiple_choice" and all(
            "input_ids" in b and b["input_ids"].dim() == 2 for b in data
        )
        model.initialize_eva(  # type: ignore[operator]
            name,
            data,
            forward_fn=forward,
            prepare_model_inputs_fn=_token_positions if tokens else None,
            prepare_layer_inputs_fn=rows_at_positions if tokens else None,
        )
    model.train_adapter(name, train_head=with_head)  # type: ignore[operator]
    return str(init)
