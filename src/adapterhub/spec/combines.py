"""The names of the ways ``model.average_adapter`` combines adapters (:mod:`adapterhub.api.arithmetic` says what each
one computes). A module of its own, without torch, so that ``adapterhub merge --help`` lists them without loading
the model code."""

from __future__ import annotations

PARAM_COMBINES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SVD_COMBINES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINES = (*PARAM_COMBINES, *SVD_COMBINES, "cat")
