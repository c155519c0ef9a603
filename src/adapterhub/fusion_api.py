"""The fusion half of the model API (AdapterFusion): see ``adapterhub.fusion``."""

from __future__ import annotations


class FusionMixin:
    """Methods mixed into the model by ``adapterhub.init`` for AdapterFusion; fusions live in
    ``model._adapterhub.fusions``."""
