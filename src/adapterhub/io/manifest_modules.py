"""The model's modules as a saved adapter's files show them: ``ModelDims.modules`` for validating an adapter that
targets modules by name (``target_modules``; LN tuning) without the model (``inspect_adapter_dir``).

What the files say, per module an adapter holds weights for:

- a spec point ``layers.<i>.<point>.<param>`` (a by-name target that is a whole projection the spec names): its
  path ``<stack layers>.<index in stack>.<module>`` relative to the base model, its layer ``i``, and ``(d_in,
  d_out)`` from the method's own reading of its weights (``linear_shapes_from``: LoRA's ``A`` ``(r, d_in)`` and
  ``B`` ``(d_out, r)``; OFT's blocks);
- a module target ``by_name.<path with ":">.<param>``: its path from the model's root, its widths read the same way
  (an ``nn.Embedding``'s LoRA has a linear one's shapes and is read as one), or, when the method reads a
  convolution there (``conv_shapes_for_config``: LoRA's ``A`` ``(r, c_in, kh, kw)``, ``B`` ``(c_out, r, 1, 1)``;
  LoKr's full ``lokr_w2`` ``(b, d, kh, kw)``, the CP cores of ``use_effective_conv2d``; a factored LoKr ``W2``
  whose split is a convolution's flattened kernel and not a linear layer's, with a kernel ``(1, kh·kw)`` standing
  for the unknown one) or the adapter declares one (``conv_modules``: ``in_channels`` and
  ``kernel_size``, which LoHa's flattened kernel does not say), an ``nn.Conv2d`` of those channels and kernel, its
  stride and padding unknown (``None``: they do not change shapes);
- a copy ``copies.<path>.<param>`` (LN tuning) or ``saved.<path>.<param>`` (``modules_to_save``): its path, the
  layer it sits in (from the spec's layer paths), and, for an LN-tuning copy, the norm's width from its ``weight``.

What they cannot say is left unknown, not guessed: the class of a module (``type_name`` is ``"Linear"`` for a
module with linear-shaped weights, ``"Norm"`` for an LN-tuning copy, which only ever copies normalisation modules,
and ``"Unknown"`` for a ``modules_to_save`` copy), the model's other modules (those the adapter does not touch),
and a width neither the file nor the config fixes (OFT's input width with ``block_share`` is ``r · b`` from the
config's ``r`` and the shared block's ``b``; with ``oft_block_size`` it is not fixed and stands at ``b``, as the
method's ``shapes_for_config`` says); a by-name target whose widths the file does not fix is
refused with a message saying so. The model's own shapes are checked when the adapter is loaded into it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from adapterhub.errors import AdapterFileError
from adapterhub.methods.base import AdapterModule, NamedModule
from adapterhub.spec.architecture import ArchitectureSpec, StackSpec
from adapterhub.spec.configs import MethodConfig
from adapterhub.spec.module_layers import layer_of_path

_POINT_KEY = re.compile(r"^layers\.(\d+)\.([a-z_]+)\.(.+)$")
_MODULE_KEY = re.compile(r"^(by_name|copies|saved)\.([^.]+)\.(.+)$")
COPY_PREFIXES = ("copies", "saved")  # state-dict prefixes of copies of the model's modules


def file_modules(
    method: type[AdapterModule],
    config: MethodConfig,
    tensors: Mapping[str, torch.Tensor],
    spec: ArchitectureSpec,
    decoder_start: int | None,
    directory: Path,
    conv: Mapping[str, tuple[int, tuple[int, ...]]] | None = None,
) -> tuple[NamedModule, ...]:
    """The modules the adapter's ``tensors`` hold weights for, as ``NamedModule`` rows (see the module docstring);
    ``conv`` the ``nn.Conv2d`` targets the adapter declares (``{path: (in_channels, kernel)}``). Raises
    AdapterFileError for a by-name target whose widths the file does not fix."""
    conv = conv or {}
    points: set[tuple[int, str]] = set()
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _POINT_KEY.match(key)
        if match is not None:
            points.add((int(match.group(1)), match.group(2)))
            continue
        match = _MODULE_KEY.match(key)
        if match is not None:
            groups.setdefault((match.group(1), match.group(2)), {})[match.group(3)] = tensor
    shapes = {point: (d_in, d_out) for point, d_in, d_out in method.shapes_for_config(config, tensors)}
    rows: list[NamedModule] = []
    for layer, point in sorted(points):
        path = _point_path(spec, layer, point, decoder_start)
        if path is None or point not in shapes:
            continue  # not a whole projection of the spec: the state check names the weight
        d_in, d_out = shapes[point]
        rows.append(
            NamedModule(path, "Linear", linear=True, d_in=d_in, d_out=d_out, layer=layer, point=point)
        )
    for (kind, key), params in groups.items():
        path = key.replace(":", ".")
        held_in = layer_of_path(spec, path, decoder_start)
        if kind == "by_name":
            # the method reads a module target's weights as it reads a point's
            renamed = {f"layers.0.x.{name}": t for name, t in params.items()}
            found = method.shapes_for_config(config, renamed)
            convs = method.conv_shapes_for_config(config, renamed)
            declared = conv.get(path)
            if convs or (declared is not None and found):
                # an nn.Conv2d target (its 4-d weights say so, or the adapter declares it: a flattened kernel does
                # not say c_in), its stride and padding the model's, unknown here; the state check fits the rest
                c_out = convs[0][2] if convs else found[0][2]
                c_in, kernel = declared if declared is not None else (convs[0][1], convs[0][3])
                shape = (tuple(kernel), None, None)
                name = f"Conv{len(shape[0])}d"  # Conv1d / Conv2d / Conv3d by the kernel's dimensions
                rows.append(NamedModule(path, name, d_in=c_in, d_out=c_out, conv=shape, layer=held_in))
                continue
            if not found:
                raise AdapterFileError(
                    f"{directory}: the weights of module target {path!r} ({', '.join(sorted(params))}) do not fix "
                    "its input and output widths without the model, so the file cannot be validated alone; load it "
                    "into its model with model.load_adapter (which checks it) instead of publishing the folder."
                )
            _, d_in, d_out = found[0]
            rows.append(NamedModule(path, "Linear", linear=True, d_in=d_in, d_out=d_out, layer=held_in))
        elif kind == "copies":
            width = params.get("weight")
            rows.append(
                NamedModule(
                    path,
                    "Norm",
                    d_in=0 if width is None else int(width.shape[-1]),
                    layer=held_in,
                    bias="bias" in params,
                )
            )
        else:
            rows.append(NamedModule(path, "Unknown", layer=held_in))
    return tuple(rows)


def check_copies(
    expected: AdapterModule, tensors: Mapping[str, torch.Tensor], directory: Path
) -> dict[str, torch.Tensor]:
    """The copies of model modules in ``tensors`` that ``expected`` (the adapter built from the file's modules)
    keeps: ``{key: tensor}`` to add to its expected state. A copy's shapes are the model's, so they are taken from
    the file, after checking that every module the adapter copies has weights there, and that an LN-tuning copy
    (``copied_paths``) holds ``weight`` ``(d,)`` and at most ``bias`` ``(d,)``."""
    out: dict[str, torch.Tensor] = {}
    for prefix, paths in (("copies", expected.copied_paths()), ("saved", expected.saved_paths())):
        for path in paths:
            head = f"{prefix}.{path.replace('.', ':')}."
            params = {k[len(head) :]: t for k, t in tensors.items() if k.startswith(head)}
            if not params:
                raise AdapterFileError(
                    f"{directory}: the adapter copies {path!r} but its files hold no weights for it."
                )
            if prefix == "copies":
                weight = params.get("weight")
                extra = sorted(set(params) - {"weight", "bias"})
                shapes = {tuple(t.shape) for t in params.values()}
                if weight is None or weight.dim() != 1 or extra or len(shapes) != 1:
                    raise AdapterFileError(
                        f"{directory}: the LN-tuning copy of {path!r} must hold weight (d,) and optionally bias (d,); "
                        f"it holds {', '.join(f'{k} {tuple(t.shape)}' for k, t in sorted(params.items()))}."
                    )
            out.update({head + name: t for name, t in params.items()})
    return out


def _stack_of(spec: ArchitectureSpec, layer: int, decoder_start: int | None) -> tuple[StackSpec, int] | None:
    stacks = spec.stacks()
    if not stacks:
        return None
    if len(stacks) > 1 and decoder_start is not None and layer >= decoder_start:
        return stacks[1], layer - decoder_start
    return stacks[0], layer


def _point_path(spec: ArchitectureSpec, layer: int, point: str, decoder_start: int | None) -> str | None:
    """The path (relative to the base model) of the module that is the whole projection ``point`` of ``layer``."""
    found = _stack_of(spec, layer, decoder_start)
    if found is None:
        return None
    stack, index = found
    linear = stack.linears.get(point)
    if linear is None or linear.part is not None:
        return None
    return f"{stack.layers}.{index}.{linear.module}"
