"""Sequence classification, regression and multi-label classification heads.

``logits = W_n · ... f(W_1 · dropout(v)) ...`` on one vector ``v`` per row (first token for encoders, last token
for decoders, or the model's pooler output): ``layers - 1`` blocks of dropout, Linear(d, d), activation, then
dropout, Linear(d, num_labels). Its parameter names (``layers.1``, ``layers.4`` for two layers) follow the layout
the ``adapters`` library uses, so its heads load by name.

Losses: ``num_labels == 1`` is regression (mean squared error); ``multilabel`` is binary cross-entropy per label
with ``labels`` of shape (batch, num_labels) holding 0/1; otherwise cross-entropy over ``labels`` (batch,).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.heads.base import (
    Head,
    HeadOutput,
    check_activation,
    check_dropout,
    check_id2label,
    check_pooling,
    check_positive_int,
    mlp,
    pool,
    register_head,
)
from adapterhub.runtime.head_inputs import HeadInputs


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
        check_positive_int(num_labels, "num_labels")
        check_positive_int(layers, "layers")
        check_id2label(id2label, num_labels)
        if multilabel and num_labels < 2:
            raise ConfigError("A multi-label head needs num_labels >= 2 (one output per label).")
        super().__init__(name, hidden_size, id2label)
        self.num_labels = num_labels
        self.settings = {
            "num_labels": num_labels,
            "layers": layers,
            "activation": check_activation(activation),
            "dropout": check_dropout(dropout),
            "pooling": check_pooling(pooling),
            "use_pooler": bool(use_pooler),
            "multilabel": bool(multilabel),
            "bias": bool(bias),
        }
        self.layers = mlp(
            hidden_size, num_labels, layers=layers, activation=activation, dropout=dropout, bias=bias
        )

    def forward(self, inputs: HeadInputs, labels: Mapping[str, torch.Tensor] | None = None) -> HeadOutput:
        if self.settings["use_pooler"] and inputs.pooled is not None:
            vector = inputs.pooled
        else:
            vector = pool(inputs, str(self.settings["pooling"]))  # (batch, d)
        logits = self.layers(vector)  # (batch, num_labels)
        target = (labels or {}).get("labels")
        loss = None
        if target is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.view(-1), target.to(logits.dtype).view(-1))
            elif self.settings["multilabel"]:
                loss = nn.functional.binary_cross_entropy_with_logits(
                    logits, target.to(logits.dtype).view_as(logits)
                )
            else:
                loss = nn.functional.cross_entropy(logits, target.view(-1))
        return HeadOutput(logits=logits, loss=loss)


@register_head("regression")
class RegressionHead(ClassificationHead):
    """One real-valued output per row, trained with mean squared error (``labels``: (batch,) floats)."""

    def __init__(self, name: str, hidden_size: int, num_labels: int = 1, **options: Any) -> None:
        if num_labels != 1:
            raise ConfigError(
                f"A regression head has exactly one output (num_labels=1), got num_labels={num_labels!r}. "
                "For several outputs use a multilabel or classification head."
            )
        if options.get("multilabel"):
            raise ConfigError("A regression head cannot be multilabel; use head type 'multilabel'.")
        if options.get("id2label"):
            raise ConfigError("A regression head has no label map (id2label).")
        super().__init__(name, hidden_size, 1, **options)


@register_head("multilabel")
class MultiLabelClassificationHead(ClassificationHead):
    """Independent yes/no per label (sigmoid outputs), trained with binary cross-entropy.

    ``labels``: (batch, num_labels) of 0/1; a prediction is ``logits > 0``."""

    def __init__(self, name: str, hidden_size: int, num_labels: int = 2, **options: Any) -> None:
        if options.pop("multilabel", True) is False:
            raise ConfigError(
                "A multilabel head must have multilabel=True; use a classification head instead."
            )
        super().__init__(name, hidden_size, num_labels, multilabel=True, **options)
