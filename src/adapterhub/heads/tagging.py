"""Token tagging (NER, POS, ...): one label per token.

``logits[b, t] = MLP(dropout(h[b, t]))`` for every token: (batch, seq, d) -> (batch, seq, num_labels). The loss is
cross-entropy over the tokens whose label is not ``-100`` and whose attention mask is 1 (padding never counts), so
labels of sub-word continuations and special tokens can be set to ``-100`` as with transformers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers.modeling_outputs import TokenClassifierOutput

from adapterhub.heads.base import (
    Head,
    HeadOutput,
    check_activation,
    check_dropout,
    check_id2label,
    check_positive_int,
    mlp,
    register_head,
)
from adapterhub.runtime.head_inputs import HeadInputs

IGNORE_INDEX = -100


@register_head("tagging")
class TaggingHead(Head):
    output_type = TokenClassifierOutput

    def __init__(
        self,
        name: str,
        hidden_size: int,
        num_labels: int = 2,
        *,
        layers: int = 1,
        activation: str = "tanh",
        dropout: float = 0.1,
        bias: bool = True,
        id2label: Mapping[int, str] | None = None,
    ) -> None:
        if id2label and num_labels != len(id2label):
            num_labels = len(id2label)
        check_positive_int(num_labels, "num_labels")
        check_positive_int(layers, "layers")
        check_id2label(id2label, num_labels)
        super().__init__(name, hidden_size, id2label)
        self.num_labels = num_labels
        self.settings = {
            "num_labels": num_labels,
            "layers": layers,
            "activation": check_activation(activation),
            "dropout": check_dropout(dropout),
            "bias": bool(bias),
        }
        self.layers = mlp(
            hidden_size, num_labels, layers=layers, activation=activation, dropout=dropout, bias=bias
        )

    def forward(self, inputs: HeadInputs, labels: Mapping[str, torch.Tensor] | None = None) -> HeadOutput:
        logits = self.layers(inputs.hidden)  # (batch, seq, num_labels)
        target = (labels or {}).get("labels")
        loss = None
        if target is not None:
            target = target.to(logits.device).long()
            if inputs.attention_mask is not None:
                target = target.masked_fill(inputs.attention_mask.to(target.device) == 0, IGNORE_INDEX)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, self.num_labels), target.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return HeadOutput(logits=logits, loss=loss)
