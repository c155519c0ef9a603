"""``AdapterManifest``: what an adapter directory holds, as the hub and the loaders describe it. Plain data with no
torch, so that the hub server can build one from safetensors headers alone (``hub/server/header_inspect.py``) as
well as from the loaded tensors (``io/manifest.py``).

``modules``: the modules a LoRA / DoRA, LoHa or LoKr adapter targets by name (``by_name.<path>.<factor>``), read
from the factors' shapes by ``low_rank_modules`` the same way in both checks (``spec.factor_shapes``), which refuse
shapes that do not make one update:

* ``"linear"``: an ``nn.Linear`` or ``Conv1D``, or an ``nn.Embedding`` (peft's ``lora_embedding_A`` / ``_B``:
  ``d_in`` its number of embeddings, ``d_out`` its width); the two have the same shapes, so the file does not say
  which (the model does when the adapter is loaded); nor does a LoHa's (or a factored LoKr's) file say whether
  its flattened width is a convolution's, unless the adapter declares it (``conv_modules``);
* ``"conv2d"``: an ``nn.Conv2d`` of ``d_in`` / ``d_out`` channels and ``kernel`` ``(kh, kw)`` (stride and padding
  are the model's): LoRA's 4-d factors, LoKr's full 4-d ``lokr_w2`` and the CP cores of ``use_effective_conv2d``
  (``hada_t1`` / ``lokr_t2``) say so, LoHa's and a factored LoKr's flattened kernels do
  only with the adapter's ``conv_modules`` (``{path: (in_channels, kernel)}``, recorded from the model when it is
  saved), which their shapes must then fit;
* ``"conv1d"`` / ``"conv3d"``: an ``nn.Conv1d`` / ``nn.Conv3d`` targeted by LoRA, whose 3-d / 5-d factors say so
  (``kernel`` ``(k,)`` / ``(kd, kh, kw)``), or an ``nn.Conv1d`` targeted by LoHa / LoKr: LoKr's full 3-d
  ``lokr_w2`` says so, the other factors (flattened ``c_in·k``, CP cores ``(r, r, k, 1)``) with the adapter's
  ``conv_modules`` (``kernel_size`` ``[k]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapterhub.errors import AdapterFileError
from adapterhub.spec.architecture import ArchitectureSpec
from adapterhub.spec.factor_shapes import CONV_MODULES, FACTOR_NAMES, Conv, factor_update
from adapterhub.spec.module_layers import layer_of_path, module_path_of_key


@dataclass(frozen=True)
class ModuleShape:
    """One module targeted by name, as its low-rank factors show it (see the module docstring); ``r`` is 0 for a
    LoKr whose factors are both full."""

    path: str
    kind: str  # "linear", "conv2d", "conv1d" (LoRA also "conv3d")
    r: int
    d_in: int
    d_out: int
    kernel: tuple[int, ...] = ()  # (kh, kw) for "conv2d"; (k,) / (kd, kh, kw) for "conv1d" / "conv3d"
    layer: int | None = None  # the transformer layer it sits in (None outside the layers)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the hub stores with a version and its API returns (``kernel`` a list)."""
        return {
            "path": self.path,
            "kind": self.kind,
            "r": self.r,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "kernel": list(self.kernel),
            "layer": self.layer,
        }


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
    modules: tuple[
        ModuleShape, ...
    ] = ()  # LoRA / DoRA / LoHa / LoKr targets by name, by their weights' shapes


def low_rank_modules(
    shapes: Mapping[str, Sequence[int]],
    spec: ArchitectureSpec | None,
    decoder_start: int | None,
    where: str,
    conv: Mapping[str, Conv] | None = None,
) -> tuple[ModuleShape, ...]:
    """The ``ModuleShape`` of every module the weights ``{key: shape}`` hold low-rank factors for
    (``by_name.<path>.<factor>``: LoRA's, LoHa's, LoKr's), sorted by path; ``conv`` the adapter's declared
    convolutions ``{path: (in_channels, kernel)}``. Raises AdapterFileError naming the module when its factors are
    not one update (a factor missing, ranks that differ, shapes of no form of the family, or not the declared
    convolution), and when a declared convolution has no factors. ``spec`` (None: unknown model type) gives the
    layer each sits in."""
    conv = dict(conv or {})
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        path = module_path_of_key(key)
        name = key.rsplit(".", 1)[-1]
        if path is not None and key.startswith("by_name.") and name in FACTOR_NAMES:
            groups.setdefault(path, {})[name] = tuple(int(d) for d in shape)
    stray = sorted(set(conv) - set(groups))
    if stray:
        raise AdapterFileError(
            f"{where}: {CONV_MODULES} declares the convolution(s) {', '.join(map(repr, stray))}, which the weights "
            "hold no low-rank factors for; the file is corrupted or was edited."
        )
    out: list[ModuleShape] = []
    for path, params in sorted(groups.items()):
        declared = conv.get(path)
        found = factor_update(params, declared)
        if found is None:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(params.items()))
            as_conv = (
                ""
                if declared is None
                else f" of the declared Conv{len(declared[1])}d (in_channels {declared[0]}, kernel_size {declared[1]})"
            )
            raise AdapterFileError(
                f"{where}: the low-rank weights of module {path!r} ({shown}) are not one update{as_conv}: expected "
                "LoRA's lora_A (r, d_in) and lora_B (d_out, r), or lora_A (r, c_in, kh, kw) and lora_B (c_out, r, 1, "
                "1) (a Conv2d target; a Conv1d / Conv3d: one / three kernel dimensions); LoHa's hada_w1_a / hada_w2_a (d_out, r) and hada_w1_b / hada_w2_b (r, d_in) "
                "(a Conv2d: d_in = c_in·kh·kw, or with use_effective_conv2d hada_t1 / hada_t2 (r, r, kh, kw) and the "
                "modes (r, c_out) / (r, c_in)); or LoKr's W1 (a, c) ⊗ W2 (b, d) (W2 on a Conv2d possibly lokr_t2 "
                "(r, r, kh, kw) with lokr_w2_a (r, b), lokr_w2_b (r, d)); the file is corrupted or was "
                "written for another model."
            )
        kind, r, d_in, d_out, kernel = found
        layer = None if spec is None else layer_of_path(spec, path, decoder_start)
        out.append(ModuleShape(path, kind, r, d_in, d_out, kernel, layer))
    return tuple(out)
