"""What a prediction head receives, shared by the heads and the ``Parallel`` runtime (which runs each branch's head):
``HeadInputs``, the loss of transformers' own sequence-classification heads (``static_loss``) and the matrix a tied
language-model head multiplies with (``output_embedding_matrix``). The heads themselves are in ``adapterhub.heads``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError, IncompatibleModelError


@dataclass
class HeadInputs:
    """What a head sees: ``hidden`` (batch, seq, d) last hidden states, the attention mask (batch, seq) and ids.

    ``num_choices`` is set for multiple-choice inputs (rows are ``batch * num_choices`` flattened choices);
    ``embeddings`` is the model's output embedding matrix (vocab, e) for heads with ``needs_embeddings``;
    ``logits_to_keep`` (from ``generate()``) asks an LM head for the logits of the last positions only;
    ``choice_mask`` (batch, n_choices) bool marks the real choices of multiple-choice inputs whose examples were
    padded to the batch's most choices (``None``: every choice is real).
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor | None
    input_ids: torch.Tensor | None
    pooled: torch.Tensor | None = None
    num_choices: int | None = None
    embeddings: torch.Tensor | None = None
    logits_to_keep: int | torch.Tensor | None = None
    choice_mask: torch.Tensor | None = None


def static_loss(logits: torch.Tensor, labels: torch.Tensor, config: Any) -> torch.Tensor:
    """The loss a transformers ``...ForSequenceClassification`` head computes, by ``config.problem_type``
    (``regression``: mean squared error; ``single_label_classification``: cross-entropy;
    ``multi_label_classification``: binary cross-entropy with logits); unset, it is inferred as transformers does
    (one label: regression; integer labels: single-label; else multi-label)."""
    num_labels = logits.shape[-1]
    problem = getattr(config, "problem_type", None)
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        if num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
        return nn.functional.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if problem == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    raise ConfigError(
        f"config.problem_type={problem!r} is not one of regression, single_label_classification, "
        "multi_label_classification."
    )


def output_embedding_matrix(model: nn.Module) -> torch.Tensor:
    """The matrix an LM head of ``model`` multiplies with: its ``lm_head`` weight, else its input embeddings."""
    for getter in ("get_output_embeddings", "get_input_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            module = None
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight
    raise IncompatibleModelError(
        f"{type(model).__name__} exposes no embedding matrix to tie a language-model head to; "
        "add the head with tie_weights=False."
    )


def frame_mask(model: nn.Module, frames: int, mask: Any) -> Any:
    """The attention mask at the positions of the hidden states: an audio encoder that shortens its input
    (wav2vec2's convolutions: ``samples -> frames``) is called with a mask over raw samples (batch, samples); the
    heads pool over frames, so it becomes (batch, frames), frame ``t`` kept while ``t`` < the number of frames the
    row's unpadded samples yield (the model's own ``_get_feature_vector_attention_mask``, which assumes right
    padding). A mask that already has ``frames`` positions, or is not a 2-D tensor, is returned as it is; a
    model that cannot map samples to frames keeps the mask too, and a pooling head then names the mismatch."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[-1] == frames:
        return mask
    to_frames = getattr(model, "_get_feature_vector_attention_mask", None)
    if to_frames is None:
        return mask
    return to_frames(frames, mask).to(mask.dtype)  # (batch, frames)
