"""Prompt tuning in the `adapters` library's layout: ``<prefix>.prompt_tuning.prompt_tunings.NAME.
prompt_embedding.weight`` ``(P, d)`` (ours: ``prompt_embedding.weight``) and the config keys ``prompt_length``,
``prompt_init``, ``prompt_init_text``, ``combine``, ``init_weights_seed``."""

from __future__ import annotations

import re
from typing import Any

import torch

from adapterhub.errors import AdapterFileError, ConfigError

OURS = "prompt_embedding.weight"


def read_prompt(
    theirs: dict[str, Any], raw: dict[str, torch.Tensor], name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if theirs.get("combine", "prefix") != "prefix":
        raise ConfigError(
            f"The prompt uses the `adapters` option combine={theirs['combine']!r}; adapterhub supports 'prefix'."
        )
    config: dict[str, Any] = {"method": "prompt_tuning", "combine": "prefix"}
    for key in ("prompt_length", "prompt_init", "prompt_init_text"):
        if theirs.get(key) is not None:
            config[key] = theirs[key]
    pattern = re.compile(rf"^(?:.*\.)?prompt_tunings\.{re.escape(name)}\.prompt_embedding\.weight$")
    found = [tensor for key, tensor in raw.items() if pattern.match(key)]
    if len(found) != 1 or len(raw) != 1:
        raise AdapterFileError(
            f"Expected one prompt_tunings.{name}.prompt_embedding.weight in the `adapters` prompt-tuning weights, "
            f"got {sorted(raw)}."
        )
    return config, {OURS: found[0]}


def write_prompt(
    ours: dict[str, Any], tensors: dict[str, torch.Tensor], name: str, prefix: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Their config and weights. ``prompt_init_ids`` has no equivalent there: such a prompt is written as
    ``random_uniform`` (the initialisation does not matter once the weights are loaded)."""
    init = ours["prompt_init"]
    if init == "from_string" and ours.get("prompt_init_text") is None:
        init = "random_uniform"
    theirs = {
        "architecture": "prompt_tuning",
        "combine": ours["combine"],
        "init_weights_seed": None,
        "prompt_init": init,
        "prompt_init_text": ours.get("prompt_init_text"),
        "prompt_length": ours["prompt_length"],
    }
    path = f"prompt_tuning.prompt_tunings.{name}.prompt_embedding.weight"
    return theirs, {f"{prefix}.{path}" if prefix else path: tensors[OURS]}
