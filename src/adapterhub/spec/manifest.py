"""``AdapterManifest``: what an adapter directory holds, as the hub and the loaders describe it. Plain data with no
torch, so that the hub server can build one from safetensors headers alone (``hub/server/header_inspect.py``) as
well as from the loaded tensors (``io/manifest.py``).

``modules``: the modules a LoRA / DoRA adapter targets by name (``by_name.<path>.lora_A`` / ``lora_B``), read from
the weights' shapes by ``low_rank_modules`` the same way in both checks, which refuse shapes that do not make one
low-rank update:

* ``"linear"``: ``A (r, d_in)``, ``B (d_out, r)``: an ``nn.Linear`` or ``Conv1D``, or an ``nn.Embedding`` (peft's
  ``lora_embedding_A`` / ``_B``: ``d_in`` its number of embeddings, ``d_out`` its width); the two have the same
  shapes, so the file does not say which (the model does when the adapter is loaded);
* ``"conv2d"``: ``A (r, c_in, kh, kw)``, ``B (c_out, r, 1, 1)``: an ``nn.Conv2d`` (stride and padding are the
  model's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapterhub.errors import AdapterFileError
from adapterhub.spec.architecture import ArchitectureSpec
from adapterhub.spec.module_layers import layer_of_path, module_path_of_key


@dataclass(frozen=True)
class ModuleShape:
    """One module targeted by name, as its LoRA weights show it (see the module docstring)."""

    path: str
    kind: str  # "linear" or "conv2d"
    r: int
    d_in: int
    d_out: int
    kernel: tuple[int, ...] = ()  # (kh, kw) for "conv2d"
    layer: int | None = None  # the transformer layer it sits in (None outside the layers)


@dataclass(frozen=True)
class AdapterManifest:
    layout: str  # "adapterhub", "adapters" (the adapters library's layout) or "peft"
    name: str
    method: str
    config: dict[str, Any]  # canonical method config
    config_hash: str  # sha256 of the canonical JSON of config
    model_type: str
    model_name: str
    hidden_size: int
    num_layers: int | None
    has_head: bool
    head_type: str | None
    id2label: dict[int, str] | None
    num_parameters: int
    files: tuple[str, ...]
    modules: tuple[ModuleShape, ...] = ()  # LoRA / DoRA targets by name, by their weights' shapes


def low_rank_modules(
    shapes: Mapping[str, Sequence[int]],
    spec: ArchitectureSpec | None,
    decoder_start: int | None,
    where: str,
) -> tuple[ModuleShape, ...]:
    """The ``ModuleShape`` of every module the weights ``{key: shape}`` hold ``by_name.<path>.lora_A`` /
    ``lora_B`` for, sorted by path; raises AdapterFileError naming the module when its two shapes are not one
    low-rank update (one of them missing, ranks that differ, neither the linear nor the convolution form). ``spec``
    (None: unknown model type) gives the layer each sits in."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        path = module_path_of_key(key)
        name = key.rsplit(".", 1)[-1]
        if path is not None and key.startswith("by_name.") and name in ("lora_A", "lora_B"):
            pairs.setdefault(path, {})[name] = tuple(int(d) for d in shape)
    out: list[ModuleShape] = []
    for path, pair in sorted(pairs.items()):
        a, b = pair.get("lora_A"), pair.get("lora_B")
        shown = ", ".join(f"{k} {v}" for k, v in sorted(pair.items()))
        linear = a is not None and b is not None and len(a) == len(b) == 2 and a[0] == b[1]
        conv = a is not None and b is not None and len(a) == len(b) == 4 and a[0] == b[1] and b[2:] == (1, 1)
        if not (linear or conv) or a is None or b is None:
            raise AdapterFileError(
                f"{where}: the LoRA weights of module {path!r} ({shown}) are not one low-rank update: expected "
                "lora_A (r, d_in) and lora_B (d_out, r) (a linear or embedding target), or lora_A (r, c_in, kh, kw) "
                "and lora_B (c_out, r, 1, 1) (a Conv2d target); the file is corrupted or not a LoRA adapter."
            )
        layer = None if spec is None else layer_of_path(spec, path, decoder_start)
        kind, kernel = ("conv2d", a[2:]) if conv else ("linear", ())
        out.append(ModuleShape(path, kind, a[0], a[1], b[0], kernel, layer))
    return tuple(out)
