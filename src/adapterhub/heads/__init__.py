"""Prediction heads. A head maps the base model's last hidden states to task outputs and is saved with an adapter.

``HEADS`` maps a head type to its class; new head types register with ``@register_head("type")``.
"""

from adapterhub.heads.base import HEADS, Head, HeadOutput, register_head
from adapterhub.heads.classification import ClassificationHead
from adapterhub.heads.static import static_head_parameters

__all__ = ["HEADS", "ClassificationHead", "Head", "HeadOutput", "register_head", "static_head_parameters"]
