"""The transformer layer a module path sits in, by the spec's layer stacks, and the check that the module paths an
adapter's file names (``by_name.<path>.…``, ``copies.``, ``saved.``, ``biases.``, ``tokens.``) sit in layers the
declared model has. Torch-free: the hub server's header check uses it as the full check does.

A path sits in layer ``i`` of a stack when it contains ``<stack layers>.<i>.`` (from the model's root or the base
model); the second stack (a decoder, CLIP's vision tower) numbers its layers after the first's: ``decoder_start +
i``. A model with ``num_layers`` layers has layers ``0 … num_layers - 1``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from adapterhub.errors import IncompatibleModelError
from adapterhub.spec.architecture import ArchitectureSpec

# state-dict prefixes whose second part is a module path with ":" for "."
MODULE_PREFIXES = ("by_name", "copies", "saved", "biases", "tokens")
_MODULE_KEY = re.compile(r"^(by_name|copies|saved|biases|tokens)\.([^.]+)(?:\.|$)")


def layer_of_path(spec: ArchitectureSpec, path: str, decoder_start: int | None) -> int | None:
    """The transformer layer the module at ``path`` sits in (see the module docstring), or None outside them."""
    for number, stack in enumerate(spec.stacks()):
        match = re.search(rf"(?:^|\.){re.escape(stack.layers)}\.(\d+)\.", path)
        if match is not None:
            offset = (decoder_start or 0) if number else 0
            return int(match.group(1)) + offset
    return None


def module_path_of_key(key: str) -> str | None:
    """The module path a state-dict key of a module held by name names (``by_name.model:layers:0:q.lora_A`` ->
    ``model.layers.0.q``), or None for any other key."""
    match = _MODULE_KEY.match(key)
    return None if match is None else match.group(2).replace(":", ".")


def check_module_layers(
    spec: ArchitectureSpec,
    keys: Iterable[str],
    num_layers: int | None,
    decoder_start: int | None,
    where: str,
) -> None:
    """Raise IncompatibleModelError when a module path among ``keys`` sits in a layer at or past ``num_layers``
    (nothing to check when the model's number of layers is not declared)."""
    if num_layers is None:
        return
    for key in sorted(keys):
        path = module_path_of_key(key)
        layer = None if path is None else layer_of_path(spec, path, decoder_start)
        if path is not None and layer is not None and layer >= num_layers:
            raise IncompatibleModelError(
                f"{where}: weight {key!r} is for module {path!r} in layer {layer}, but the declared model "
                f"has {num_layers} layers (0 to {num_layers - 1}); the adapter was made for a deeper model: publish it with that model's "
                "num_layers, or load it into the model it was made for."
            )
