"""Checking that saved tensors fit the module a config describes."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from adapterhub.errors import AdapterFileError


def check_state_fits(
    expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise AdapterFileError unless ``tensors`` has exactly the names and shapes of ``expected``."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(
        k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or wrong):
        return
    details = []
    if missing:
        details.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        details.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        shapes = ", ".join(f"{k}: {tuple(tensors[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:5])
        details.append("wrong shapes " + shapes)
    raise AdapterFileError(
        f"The weights of {what} do not fit its config ({'; '.join(details)}). The file is corrupted or was "
        "written for a different config."
    )
