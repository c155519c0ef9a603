"""CLIP's image-text objective and zero-shot classification, as functions over a two-tower ``CLIPModel`` (with or
without adapters: the model's active setup applies to both towers).

With ``t_i`` the L2-normalised text embedding of caption ``i`` and ``v_j`` the L2-normalised image embedding of
image ``j`` (each tower's pooled output through its projection), and ``s`` the model's learned ``logit_scale``:

    L[i, j] = exp(s) · t_i · v_j                       (logits_per_text, (n_text, n_image); logits_per_image = Lᵀ)

Contrastive loss (CLIP's symmetric InfoNCE over a batch of ``n`` matching pairs, pair ``k`` = caption ``k`` and
image ``k``):

    loss = ½ · ( CE(L, arange(n)) + CE(Lᵀ, arange(n)) )
         = -1/(2n) · Σ_k [ log softmax_j(L[k, :])[k] + log softmax_i(L[:, k])[k] ]

that is, every caption must pick its own image among the batch's images and every image its own caption. Zero-shot
classification scores each image against one prompt per class ("a photo of a {label}"): ``logits = Lᵀ`` over the
class prompts, ``(n_image, n_class)``; the predicted class is the argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from adapterhub.errors import ConfigError

__all__ = ["clip_contrastive_loss", "clip_logits", "contrastive_loss", "zero_shot_classify"]


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss of a square similarity matrix ``L`` (``(n, n)``, row ``i`` = caption ``i``,
    column ``j`` = image ``j``, matching pairs on the diagonal): ``½ (CE(L, arange(n)) + CE(Lᵀ, arange(n)))``."""
    if logits_per_text.dim() != 2 or logits_per_text.shape[0] != logits_per_text.shape[1]:
        raise ConfigError(
            "The contrastive loss needs one caption per image (a square (n, n) similarity matrix); got shape "
            f"{tuple(logits_per_text.shape)}. Pass as many captions as images, caption k describing image k."
        )
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)  # (n,)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2


def _require_two_towers(model: nn.Module) -> None:
    if not (
        hasattr(model, "text_model") and hasattr(model, "vision_model") and hasattr(model, "logit_scale")
    ):
        raise ConfigError(
            f"{type(model).__name__} is not a two-tower CLIP model (text_model, vision_model and logit_scale); "
            "load it with transformers.CLIPModel (a tower model alone has no image-text similarity)."
        )


def clip_logits(
    model: nn.Module,
    pixel_values: torch.Tensor,
    text: Mapping[str, torch.Tensor] | torch.Tensor,
) -> torch.Tensor:
    """``L = exp(s) · T Vᵀ`` of the module docstring, ``(n_text, n_image)``: one forward of ``model`` (its
    active adapters apply) over ``pixel_values`` ``(n_image, 3, H, W)`` and ``text`` (``input_ids`` ``(n_text, T)``
    or a mapping with ``input_ids`` and optionally ``attention_mask``)."""
    _require_two_towers(model)
    inputs = dict(text) if isinstance(text, Mapping) else {"input_ids": text}
    out = model(pixel_values=pixel_values, **inputs)
    image = F.normalize(out.image_embeds, dim=-1)  # (n_image, p)
    captions = F.normalize(out.text_embeds, dim=-1)  # (n_text, p)
    scale = model.logit_scale.exp()  # type: ignore[operator]
    return scale * captions @ image.t().to(captions.device)  # (n_text, n_image)


def clip_contrastive_loss(
    model: nn.Module,
    pixel_values: torch.Tensor,
    text: Mapping[str, torch.Tensor] | torch.Tensor,
) -> torch.Tensor:
    """The symmetric InfoNCE loss of ``n`` image-caption pairs (caption ``k`` describes image ``k``) under the
    model's active setup: ``contrastive_loss(clip_logits(model, pixel_values, text))``; equal to
    ``CLIPModel(..., return_loss=True).loss``. Differentiable: train adapters by minimising it."""
    return contrastive_loss(clip_logits(model, pixel_values, text))


def zero_shot_classify(
    model: nn.Module,
    images: torch.Tensor,
    class_prompts: Mapping[str, torch.Tensor] | torch.Tensor | Sequence[str],
    *,
    tokenizer: Callable[..., Any] | None = None,
) -> torch.Tensor:
    """Zero-shot class logits ``(n_image, n_class)``: the scaled cosine similarity ``exp(s) · v_j · t_c`` of each
    image ``images[j]`` (``(n_image, 3, H, W)`` pixel values) and each class prompt ``c`` (one per class, e.g.
    "a photo of a dog"), under the model's active setup; ``logits.argmax(-1)`` is the predicted class, and
    ``logits.softmax(-1)`` the class probabilities. ``class_prompts``: token ids ``(n_class, T)``, a tokenizer's
    output (``input_ids``, ``attention_mask``), or strings with ``tokenizer`` given (padded to one length). Runs
    without gradients."""
    if isinstance(class_prompts, Sequence) and not isinstance(class_prompts, torch.Tensor):
        if tokenizer is None:
            raise ConfigError(
                "zero_shot_classify got class prompts as strings but no tokenizer; pass tokenizer=<the model's "
                "CLIP tokenizer>, or token ids (n_class, T) / a tokenizer's output instead."
            )
        encoded = tokenizer(list(class_prompts), padding=True, return_tensors="pt")
        class_prompts = {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}
    with torch.no_grad():
        return clip_logits(model, images, class_prompts).t()  # (n_image, n_class)
