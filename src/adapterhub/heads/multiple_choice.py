"""Multiple choice: score each (context, choice) row, softmax over the choices of one example.

Inputs of shape (batch, n_choices, seq) are flattened to (batch * n_choices, seq) before the base model runs (by
the model itself for ``AutoModelForMultipleChoice``, by a pre-hook of the routing for any other model). The head
pools one vector per row, maps it to one score and reshapes: (batch * n_choices, d) -> (batch, n_choices).
``labels`` (batch,) is the index of the right choice; the loss is cross-entropy over the choices.

Examples with fewer choices than others in their batch are padded with extra choices (see
:func:`adapterhub.data.collate`), and ``choice_mask`` (batch, n_choices) bool, a keyword of the model call, marks
the real ones. The head sets the logits of padded choices to the dtype's minimum (:func:`mask_choices`) before the
loss, so they take no part in the softmax, the loss or the argmax and are never predicted. Without ``choice_mask``
every choice is real.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers.modeling_outputs import MultipleChoiceModelOutput

from adapterhub.errors import ConfigError
from adapterhub.heads.base import (
    Head,
    HeadOutput,
    check_activation,
    check_dropout,
    check_pooling,
    check_positive_int,
    mlp,
    pool,
    register_head,
)
from adapterhub.runtime.head_inputs import HeadInputs


def mask_choices(logits: torch.Tensor, choice_mask: torch.Tensor | None) -> torch.Tensor:
    """``logits`` (batch, n_choices) with padded choices (``choice_mask`` False) set to the dtype's minimum.

    ``choice_mask`` is (batch, n_choices), bool or 0/1; ``None`` returns ``logits`` unchanged. A softmax then gives
    padded choices probability 0 (exactly: ``exp(min - max)`` underflows), so cross-entropy over the masked logits
    equals cross-entropy over each example's real choices, and ``argmax`` never picks a padded choice. Use it on the
    logits of a model's own (built-in) multiple-choice head, which cannot take a ``choice_mask``.

    Raises :class:`ConfigError` when the shapes differ.
    """
    if choice_mask is None:
        return logits
    if tuple(choice_mask.shape) != tuple(logits.shape):
        raise ConfigError(
            f"choice_mask has shape {tuple(choice_mask.shape)} but the logits are {tuple(logits.shape)} "
            "(batch, n_choices); pass the choice_mask collated with the same batch."
        )
    real = choice_mask.to(device=logits.device, dtype=torch.bool)  # (batch, n_choices)
    return logits.masked_fill(~real, torch.finfo(logits.dtype).min)


@register_head("multiple_choice")
class MultipleChoiceHead(Head):
    output_type = MultipleChoiceModelOutput
    flattens_choices = True
    input_names = ("choice_mask",)

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
        logits = mask_choices(logits, inputs.choice_mask)  # padded choices -> dtype min
        target = (labels or {}).get("labels")
        loss = None
        if target is not None:
            loss = nn.functional.cross_entropy(logits, target.to(logits.device).long().view(-1))
        return HeadOutput(logits=logits, loss=loss)
