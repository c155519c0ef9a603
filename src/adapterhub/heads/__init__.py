"""Prediction heads. A head maps the base model's last hidden states to task outputs and is saved with an adapter.

``HEADS`` maps a head type to its class; new head types register with ``@register_head("type")``. Types:
classification, regression, multilabel, tagging, multiple_choice, question_answering, causal_lm, masked_lm, and
``static`` for the model's own built-in head (see ``heads/static.py``). ``contrastive``: CLIP's image-text loss
and zero-shot classification as functions over a two-tower ``CLIPModel``. ``routing`` runs the active head after the
model's forward. The heads layer may import spec, methods and runtime (what a head receives, ``HeadInputs``, is in
``adapterhub.runtime.head_inputs``, shared with the ``Parallel`` runtime), never io, hub, api or above.
"""

from adapterhub.heads.base import HEADS, Head, HeadOutput, register_head
from adapterhub.heads.classification import ClassificationHead, MultiLabelClassificationHead, RegressionHead
from adapterhub.heads.contrastive import (
    clip_contrastive_loss,
    clip_logits,
    contrastive_loss,
    zero_shot_classify,
)
from adapterhub.heads.lm import CausalLMHead, LanguageModelHead, MaskedLMHead
from adapterhub.heads.multiple_choice import MultipleChoiceHead, mask_choices
from adapterhub.heads.qa import QuestionAnsweringHead
from adapterhub.heads.static import static_head_parameters
from adapterhub.heads.tagging import TaggingHead
from adapterhub.runtime.head_inputs import HeadInputs

__all__ = [
    "HEADS",
    "CausalLMHead",
    "ClassificationHead",
    "Head",
    "HeadInputs",
    "HeadOutput",
    "LanguageModelHead",
    "MaskedLMHead",
    "MultiLabelClassificationHead",
    "MultipleChoiceHead",
    "QuestionAnsweringHead",
    "RegressionHead",
    "TaggingHead",
    "clip_contrastive_loss",
    "clip_logits",
    "contrastive_loss",
    "mask_choices",
    "register_head",
    "static_head_parameters",
    "zero_shot_classify",
]
