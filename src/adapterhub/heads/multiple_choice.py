"""Multiple choice: score each (context, choice) row, softmax over the choices of one example.

Inputs of shape (batch, n_choices, seq) are flattened to (batch * n_choices, seq) before the base model runs (by
the model itself for ``AutoModelForMultipleChoice``, by a pre-hook of the routing for any other model). The head
pools one vector per row, maps it to one score and reshapes: (batch * n_choices, d) -> (batch, n_choices).
``labels`` (batch,) is the index of the right choice; the loss is cross-entropy over the choices.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers.modeling_outputs import MultipleChoiceModelOutput

from adapterhub.errors import ConfigError
from adapterhub.heads.base import (
    Head,
    HeadInputs,
    HeadOutput,
    check_activation,
    check_dropout,
    check_pooling,
    check_positive_int,
    mlp,
    pool,
    register_head,
)


@register_head("multiple_choice")
class MultipleChoiceHead(Head):
    output_type = MultipleChoiceModelOutput
    flattens_choices = True

    def __init__(
        self,
        name: str,
        hidden_size: int,
        num_choices: int | None = None,
        *,
        layers: int = 2,
        activation: str = "tanh",
        dropout: float = 0.1,
        pooling: str = "first",
        use_pooler: bool = False,
        bias: bool = True,
        id2label: Mapping[int, str] | None = None,
    ) -> None:
        if num_choices is not None:
            check_positive_int(num_choices, "num_choices")
        check_positive_int(layers, "layers")
        super().__init__(name, hidden_size, id2label)
        self.settings = {
            "num_choices": num_choices,  # informative; the number of choices is read from each batch
            "layers": layers,
            "activation": check_activation(activation),
            "dropout": check_dropout(dropout),
            "pooling": check_pooling(pooling),
            "use_pooler": bool(use_pooler),
            "bias": bool(bias),
        }
        self.layers = mlp(hidden_size, 1, layers=layers, activation=activation, dropout=dropout, bias=bias)

    def forward(self, inputs: HeadInputs, labels: Mapping[str, torch.Tensor] | None = None) -> HeadOutput:
        n_choices = inputs.num_choices or self.settings["num_choices"]
        if not n_choices:
            raise ConfigError(
                "A multiple-choice head needs inputs of shape (batch, n_choices, seq); got flat rows and the head "
                "has no num_choices set."
            )
        if self.settings["use_pooler"] and inputs.pooled is not None:
            vector = inputs.pooled
        else:
            vector = pool(inputs, str(self.settings["pooling"]))  # (batch * n_choices, d)
        logits = self.layers(vector).view(-1, n_choices)  # (batch, n_choices)
        target = (labels or {}).get("labels")
        loss = None
        if target is not None:
            loss = nn.functional.cross_entropy(logits, target.to(logits.device).long().view(-1))
        return HeadOutput(logits=logits, loss=loss)
