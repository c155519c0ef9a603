"""Extractive question answering: a start and an end score per token.

``(start, end) = MLP(h[b, t])`` with two outputs: (batch, seq, d) -> two (batch, seq) tensors. The loss follows
transformers: cross-entropy of ``start_positions`` over the start scores and of ``end_positions`` over the end scores,
averaged; positions outside the sequence are clamped to ``seq`` and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from adapterhub.heads.base import (
    Head,
    HeadOutput,
    check_activation,
    check_dropout,
    check_positive_int,
    mlp,
    register_head,
)
from adapterhub.runtime.head_inputs import HeadInputs


@register_head("question_answering")
class QuestionAnsweringHead(Head):
    output_type = QuestionAnsweringModelOutput
    label_names = ("start_positions", "end_positions")

    def __init__(
        self,
        name: str,
        hidden_size: int,
        *,
        layers: int = 1,
        activation: str = "tanh",
        dropout: float = 0.0,
        bias: bool = True,
        id2label: Mapping[int, str] | None = None,
    ) -> None:
        check_positive_int(layers, "layers")
        super().__init__(name, hidden_size, id2label)
        self.settings = {
            "layers": layers,
            "activation": check_activation(activation),
            "dropout": check_dropout(dropout),
            "bias": bool(bias),
        }
        self.layers = mlp(hidden_size, 2, layers=layers, activation=activation, dropout=dropout, bias=bias)

    def forward(self, inputs: HeadInputs, labels: Mapping[str, torch.Tensor] | None = None) -> HeadOutput:
        logits = self.layers(inputs.hidden)  # (batch, seq, 2)
        start_logits, end_logits = (
            t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1)
        )  # (batch, seq)
        labels = labels or {}
        starts, ends = labels.get("start_positions"), labels.get("end_positions")
        loss = None
        if starts is not None and ends is not None:
            ignored = start_logits.shape[1]
            starts = starts.to(logits.device).long().view(-1).clamp(0, ignored)
            ends = ends.to(logits.device).long().view(-1).clamp(0, ignored)
            loss = (
                nn.functional.cross_entropy(start_logits, starts, ignore_index=ignored)
                + nn.functional.cross_entropy(end_logits, ends, ignore_index=ignored)
            ) / 2
        return HeadOutput(
            logits=logits, loss=loss, extra={"start_logits": start_logits, "end_logits": end_logits}
        )
