"""Sequence classification and regression head.

``logits = W_n · ... f(W_1 · dropout(v)) ...`` on one vector ``v`` per row (first token for encoders, last token
for decoders, or the model's pooler output): ``layers - 1`` blocks of dropout, Linear(d, d), activation, then
dropout, Linear(d, num_labels). Its parameter names (``layers.1``, ``layers.4`` for two layers) follow the layout
the ``adapters`` library uses, so its heads load by name. ``num_labels == 1`` is regression (MSE loss); otherwise
cross-entropy, or binary cross-entropy per label when ``multilabel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.heads.base import Head, HeadInputs, HeadOutput, pool, register_head
from adapterhub.methods.bottleneck import make_activation


@register_head("classification")
class ClassificationHead(Head):
    def __init__(
        self,
        name: str,
        hidden_size: int,
        num_labels: int = 2,
        *,
        layers: int = 2,
        activation: str = "tanh",
        dropout: float = 0.1,
        pooling: str = "first",
        use_pooler: bool = False,
        multilabel: bool = False,
        bias: bool = True,
        id2label: Mapping[int, str] | None = None,
    ) -> None:
        if id2label and num_labels != len(id2label):
            num_labels = len(id2label)
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ConfigError(f"num_labels must be a positive integer, got {num_labels!r}.")
        if not isinstance(layers, int) or layers < 1:
            raise ConfigError(f"layers must be a positive integer, got {layers!r}.")
        super().__init__(name, hidden_size, id2label)
        self.num_labels = num_labels
        self.settings = {
            "num_labels": num_labels,
            "layers": layers,
            "activation": activation,
            "dropout": dropout,
            "pooling": pooling,
            "use_pooler": use_pooler,
            "multilabel": multilabel,
            "bias": bias,
        }
        modules: list[nn.Module] = []
        for _ in range(layers - 1):
            modules += [
                nn.Dropout(dropout),
                nn.Linear(hidden_size, hidden_size, bias=bias),
                make_activation(activation),
            ]
        modules += [nn.Dropout(dropout), nn.Linear(hidden_size, num_labels, bias=bias)]
        self.layers = nn.Sequential(*modules)
        for module in self.layers:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def options(self) -> dict[str, Any]:
        return dict(self.settings)

    def forward(self, inputs: HeadInputs, labels: torch.Tensor | None = None) -> HeadOutput:
        if self.settings["use_pooler"] and inputs.pooled is not None:
            vector = inputs.pooled
        else:
            vector = pool(inputs, self.settings["pooling"])  # (batch, d)
        logits = self.layers(vector)  # (batch, num_labels)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
            elif self.settings["multilabel"]:
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels.view(-1))
        return HeadOutput(logits=logits, loss=loss)
