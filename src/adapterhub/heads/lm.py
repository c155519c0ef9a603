"""Language-model heads: causal LM (decoders, next-token prediction) and masked LM (encoders).

``logits = T(h) · Eᵀ + b`` where ``E`` (vocab, e) is the output embedding matrix and ``T`` is the identity for one
layer, or ``layers - 2`` blocks of Linear(d, d) + activation followed by Linear(d, e), activation and LayerNorm(e)
(the BERT/ELECTRA prediction transform) for two or more.

By default (``tie_weights=True``) ``E`` is the model's own output embedding matrix (its ``lm_head`` if it has one,
else its input embeddings), handed to the head at every forward pass: it is not a parameter of the head, so it is
neither saved in ``head.safetensors`` nor trained by ``train_adapter``. With ``tie_weights=False`` the head owns a
copy of ``E`` (initialised from the model's when the head is added) that is saved and trained with the head.

Losses: causal LM predicts token ``t + 1`` from position ``t`` (``labels`` are usually the ``input_ids``);
masked LM predicts every position whose label is not ``-100``. Padding positions (attention mask 0) never count.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput

from adapterhub.errors import ConfigError, IncompatibleModelError
from adapterhub.heads.base import (
    Head,
    HeadOutput,
    check_activation,
    check_dropout,
    check_positive_int,
    register_head,
)
from adapterhub.methods.bottleneck import make_activation
from adapterhub.runtime.head_inputs import HeadInputs, output_embedding_matrix

IGNORE_INDEX = -100


class LanguageModelHead(Head):
    """Shared code of the causal and masked LM heads (see the module docstring)."""

    default_layers = 1
    default_activation = "gelu"
    default_bias = False

    def __init__(
        self,
        name: str,
        hidden_size: int,
        vocab_size: int | None = None,
        *,
        embedding_size: int | None = None,
        layers: int | None = None,
        activation: str | None = None,
        dropout: float = 0.0,
        tie_weights: bool = True,
        bias: bool | None = None,
        layer_norm_eps: float = 1e-12,
        id2label: Mapping[int, str] | None = None,
    ) -> None:
        if vocab_size is None:
            raise ConfigError(
                f"A {self.head_type} head needs vocab_size (model.add_{self.head_type}_head fills it in from the "
                "model's config)."
            )
        check_positive_int(vocab_size, "vocab_size")
        embedding_size = hidden_size if embedding_size is None else embedding_size
        check_positive_int(embedding_size, "embedding_size")
        layers = self.default_layers if layers is None else layers
        check_positive_int(layers, "layers")
        activation = check_activation(self.default_activation if activation is None else activation)
        bias = self.default_bias if bias is None else bool(bias)
        if not isinstance(tie_weights, bool):
            raise ConfigError(f"tie_weights must be True or False, got {tie_weights!r}.")
        if layers == 1 and embedding_size != hidden_size:
            raise ConfigError(
                f"The model's embeddings have width {embedding_size} but its hidden states {hidden_size}; a one-layer "
                "LM head cannot map one to the other. Use layers=2 (a projection) or tie_weights=False."
            )
        super().__init__(name, hidden_size, id2label)
        self.vocab_size = vocab_size
        self.needs_embeddings = tie_weights  # type: ignore[misc]
        self.settings = {
            "vocab_size": vocab_size,
            "embedding_size": embedding_size,
            "layers": layers,
            "activation": activation,
            "dropout": check_dropout(dropout),
            "tie_weights": tie_weights,
            "bias": bias,
            "layer_norm_eps": float(layer_norm_eps),
        }
        transform: list[nn.Module] = [nn.Dropout(dropout)]
        if layers > 1:
            for _ in range(layers - 2):
                transform += [nn.Linear(hidden_size, hidden_size), make_activation(activation)]
            transform += [
                nn.Linear(hidden_size, embedding_size),
                make_activation(activation),
                nn.LayerNorm(embedding_size, eps=layer_norm_eps),
            ]
        self.transform = nn.Sequential(*transform)
        for module in self.transform:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.decoder = None if tie_weights else nn.Linear(embedding_size, vocab_size, bias=False)
        if self.decoder is not None:
            nn.init.normal_(self.decoder.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    def check_model(self, model: nn.Module) -> None:
        if not self.settings["tie_weights"]:
            return
        shape = tuple(output_embedding_matrix(model).shape)
        wanted = (self.settings["vocab_size"], self.settings["embedding_size"])
        if shape != wanted:
            raise IncompatibleModelError(
                f"The {self.head_type} head {self.head_name!r} is tied to an embedding matrix of shape {wanted}, "
                f"but this model's is {shape}. Use a model with the same vocabulary, or tie_weights=False."
            )

    def init_from_model(self, model: nn.Module) -> None:
        """Start an untied head from the model's own embedding matrix (if shapes agree)."""
        if self.decoder is None:
            return
        try:
            weight = output_embedding_matrix(model)
        except IncompatibleModelError:
            return
        if tuple(weight.shape) == tuple(self.decoder.weight.shape):
            with torch.no_grad():
                self.decoder.weight.copy_(weight.detach())

    def logits(self, inputs: HeadInputs) -> torch.Tensor:
        hidden = inputs.hidden  # (batch, seq, d)
        keep = inputs.logits_to_keep
        if isinstance(keep, int) and keep > 0:
            hidden = hidden[:, -keep:]
        elif isinstance(keep, torch.Tensor):
            hidden = hidden[:, keep]
        x = self.transform(hidden)  # (batch, seq, e)
        if self.decoder is not None:
            weight = self.decoder.weight
        elif inputs.embeddings is not None:
            weight = inputs.embeddings
        else:
            raise ConfigError(f"The tied {self.head_type} head {self.head_name!r} got no embedding matrix.")
        return nn.functional.linear(
            x, weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
        )

    @staticmethod
    def masked_targets(target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        target = target.long()
        if mask is not None and mask.shape == target.shape:
            target = target.masked_fill(mask.to(target.device) == 0, IGNORE_INDEX)
        return target


@register_head("causal_lm")
class CausalLMHead(LanguageModelHead):
    output_type = CausalLMOutputWithPast

    def forward(self, inputs: HeadInputs, labels: Mapping[str, torch.Tensor] | None = None) -> HeadOutput:
        logits = self.logits(inputs)  # (batch, seq, vocab)
        target = (labels or {}).get("labels")
        loss = None
        if target is not None:
            target = self.masked_targets(target.to(logits.device), inputs.attention_mask)
            shifted = target[:, 1:].reshape(-1)  # position t predicts token t + 1
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), shifted, ignore_index=IGNORE_INDEX
            )
        return HeadOutput(logits=logits, loss=loss)


@register_head("masked_lm")
class MaskedLMHead(LanguageModelHead):
    output_type = MaskedLMOutput
    default_layers = 2
    default_bias = True

    def forward(self, inputs: HeadInputs, labels: Mapping[str, torch.Tensor] | None = None) -> HeadOutput:
        logits = self.logits(inputs)  # (batch, seq, vocab)
        target = (labels or {}).get("labels")
        loss = None
        if target is not None:
            target = self.masked_targets(target.to(logits.device), inputs.attention_mask)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return HeadOutput(logits=logits, loss=loss)
