"""Targeting modules by name, as peft does: which ``nn.Linear`` / ``Conv1D`` modules a LoRA, LoHa or LoKr config with
``target_modules`` selects, and each one's rank and alpha.

The rules are peft's (0.21), applied to the module paths of ``ModelDims.modules`` (``model.named_modules()``):

- ``exclude_modules``: a string is a regex over the whole name; a list excludes a name equal to an entry or
  ending in ``"." + entry``. Excluded modules are never targets.
- ``target_modules``: ``"all-linear"`` is every Linear/Conv1D except the model's output head: its output embeddings
  (the LM head), else a sequence classifier's ``score`` / ``classifier`` module (as peft with
  ``task_type="SEQ_CLS"``; the classifier trains whole with the adapter here); another
  string is a regex over the whole name; a list selects names equal to an entry or ending in ``"." + entry``.
- ``layers_to_transform`` (list form only): the module's layer index is the first number after
  ``<layers_pattern>.`` in its name (any of the names given), or, without ``layers_pattern``, the first
  ``<name>.<number>.`` segment; modules without one, or with another index, are not targets.
- ``rank_pattern`` / ``alpha_pattern``: the first key (in key order) such that the name matches
  ``(.*\\.)?(<key>)$`` gives the module's rank / alpha; otherwise ``r`` / ``alpha``.

A selected module that is not a Linear, Conv1D, Conv1d / Conv2d / Conv3d, Embedding or MultiheadAttention raises
(as peft does), naming it; so does a selection that matches nothing, and a module inside an nn.MultiheadAttention
(its ``out_proj``, which the attention uses without calling: peft's LoRA there has no effect).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.methods.base import ModelDims, NamedModule
from adapterhub.spec.configs import ALL_LINEAR, ModuleTargeting


@dataclass(frozen=True)
class ModuleTarget:
    """One selected module with its rank and alpha (``module.point``: the spec point it is, if any)."""

    module: NamedModule
    r: int
    alpha: float


def _by_name(names: str | tuple[str, ...], key: str) -> bool:
    if isinstance(names, str):
        return re.fullmatch(names, key) is not None
    return key in names or any(key.endswith(f".{name}") for name in names)


def excluded(config: Any, key: str) -> bool:
    """Whether ``exclude_modules`` leaves the module named ``key`` out."""
    return config.exclude_modules is not None and _by_name(config.exclude_modules, key)


def layer_index(key: str, layers_pattern: Sequence[str] | None) -> int | None:
    """The layer index in a module name as peft reads it for ``layers_to_transform``, or None."""
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for pattern in layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return int(match.group("idx")) if match is not None else None


def targeted(config: Any, module: NamedModule) -> bool:
    """Whether ``target_modules`` (with ``layers_to_transform``) selects ``module`` (exclusion not applied)."""
    names = config.target_modules
    if names is None:
        return False
    key = module.path
    if names == ALL_LINEAR:
        return module.linear and not module.output_head
    if isinstance(names, str):
        return re.fullmatch(names, key) is not None
    if key in names:
        return True  # named exactly: layers_to_transform does not apply (as in peft)
    if not any(key.endswith(f".{name}") for name in names):
        return False
    if config.layers_to_transform is None:
        return True
    index = layer_index(key, config.layers_pattern)
    return index is not None and index in config.layers_to_transform


def pattern_value(table: Sequence[tuple[str, object]], key: str) -> object | None:
    """The value of the first pattern key matching the end of ``key`` (peft's ``get_pattern_key``), or None."""
    for pattern, value in table:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return None


def selected(config: Any, dims: ModelDims) -> list[NamedModule]:
    """The modules ``config``'s ``target_modules`` (with ``exclude_modules``, ``layers_to_transform``,
    ``layers_pattern``) selects, in the model's module order; raises when it selects none."""
    if not dims.modules:
        raise ConfigError(
            "target_modules selects modules by name, but this model's module list is not known (ModelDims.modules "
            "is empty); add the adapter through the model (model.add_adapter) so its modules can be listed."
        )
    chosen = [m for m in dims.modules if not excluded(config, m.path) and targeted(config, m)]
    if not chosen:
        linear = [m.path.rsplit(".", 1)[-1] for m in dims.modules if m.linear]
        raise ConfigError(
            f"target_modules={_show(config.target_modules)} (with exclude_modules / layers_to_transform) selects "
            f"no module of this {dims.model_type} model. Its linear layers are named: "
            f"{', '.join(sorted(set(linear))) or 'none'} (match a name's end, or pass a regex over whole names)."
        )
    return chosen


def inside_attention(dims: ModelDims, path: str) -> str | None:
    """The path of the ``nn.MultiheadAttention`` holding the module at ``path`` (below it), or None."""
    return next((m.path for m in dims.modules if m.attention and path.startswith(m.path + ".")), None)


def select_modules(config: ModuleTargeting, dims: ModelDims) -> list[ModuleTarget]:
    """The modules ``config`` targets on a model with ``dims``, in the model's module order."""
    chosen: list[ModuleTarget] = []
    for module in selected(config, dims):
        if not (module.linear or module.embedding or module.conv or module.attention):
            raise ConfigError(
                f"target_modules={_show(config.target_modules)} selects {module.path!r}, a {module.type_name}; "
                "LoRA targeted by name attaches to nn.Linear, Conv1D, nn.Conv1d / Conv2d / Conv3d, nn.Embedding and "
                "nn.MultiheadAttention modules. Name the layers inside it (or add it to exclude_modules)."
            )
        holder = inside_attention(dims, module.path)
        if holder is not None:
            raise ConfigError(
                f"target_modules={_show(config.target_modules)} selects {module.path!r}, inside the "
                f"nn.MultiheadAttention {holder!r}, which uses its weights without calling it (peft's LoRA there "
                f"has no effect). Target {holder!r} itself (LoRA then adapts its in_proj and out_proj), and add "
                f"{module.path!r} to exclude_modules."
            )
        if module.attention and config.method != "lora":
            raise ConfigError(
                f"target_modules={_show(config.target_modules)} selects {module.path!r}, an nn.MultiheadAttention; "
                f"{config.method} on it is not supported (LoRA is; peft refuses DoRA there too). Leave it out of "
                "target_modules."
            )
        # LoRA, DoRA: any of Conv1d / Conv2d / Conv3d; methods with adapts_conv2d (LoHa, LoKr): Conv1d / Conv2d
        conv_ok = config.method in ("lora", "dora") or (
            config.adapts_conv2d and module.conv is not None and len(module.conv[0]) in (1, 2)
        )
        if (module.embedding and config.method != "lora") or (module.conv and not conv_ok):
            raise ConfigError(
                f"target_modules={_show(config.target_modules)} selects {module.path!r}, a {module.type_name}; "
                f"{config.method} on nn.{module.type_name} is not supported yet (LoRA is). Leave it out of "
                "target_modules."
            )
        patterns = config.module_patterns  # AdaLoRA: one initial rank (init_r) for every module
        r = pattern_value(config.rank_pattern, module.path) if patterns else None
        alpha = pattern_value(config.alpha_pattern, module.path) if patterns else None
        if module.groups > 1:
            _check_grouped(config, module, int(r) if r is not None else config.r)  # type: ignore[call-overload]
        chosen.append(
            ModuleTarget(
                module,
                int(r) if r is not None else config.r,  # type: ignore[call-overload]
                float(alpha) if alpha is not None else config.alpha,  # type: ignore[arg-type]
            )
        )
    return chosen


def _check_grouped(config: ModuleTargeting, module: NamedModule, r: int) -> None:
    """Raise unless LoRA can adapt the grouped convolution ``module`` with rank ``r`` as peft does: plain LoRA, ``r``
    divisible by ``groups`` (``lora_B`` is grouped as the module)."""
    if config.method != "lora":
        raise ConfigError(
            f"{module.path!r} is an nn.{module.type_name} with groups={module.groups}; {config.method} on grouped "
            "convolutions is not supported (LoRA is, as in peft). Leave it out of target_modules."
        )
    if r % module.groups:
        raise ConfigError(
            f"{module.path!r} is an nn.{module.type_name} with groups={module.groups}, and its rank {r} is not "
            "divisible by it (LoRA's lora_B is grouped as the module, as peft's). Choose a rank divisible by "
            f"{module.groups} (rank_pattern for this module), or leave it out of target_modules."
        )


def feedforward(names: str | tuple[str, ...] | None, path: str) -> bool:
    """(IA)³'s ``feedforward_modules`` (peft's rule): a regex string matches the whole path; a list entry matches
    a path that ends with it."""
    if names is None:
        return False
    if isinstance(names, str):
        return re.fullmatch(names, path) is not None
    return any(path.endswith(name) for name in names)


def _show(names: str | tuple[str, ...] | None) -> str:
    return repr(names if isinstance(names, str) or names is None else list(names))


def select_saved(config: ModuleTargeting, dims: ModelDims, targets: Sequence[str] = ()) -> tuple[str, ...]:
    """The paths of the modules ``modules_to_save`` names (peft's rule: a module whose path ends with an entry),
    in the model's module order. Raises when an entry matches nothing, when one selected module holds another, or
    when a selected module is also a LoRA target (``targets``: their paths)."""
    names = config.modules_to_save
    if not names:
        return ()
    if not dims.modules:
        raise ConfigError(
            "modules_to_save names modules of the model, but its module list is not known (ModelDims.modules is "
            "empty); add the adapter through the model (model.add_adapter) so its modules can be listed."
        )
    paths = tuple(m.path for m in dims.modules if any(m.path.endswith(name) for name in names))
    for name in names:
        if not any(p.endswith(name) for p in paths):
            top = sorted({m.path.split(".")[0] for m in dims.modules})
            raise ConfigError(
                f"modules_to_save names {name!r}, but no module of this {dims.model_type} model has a path ending "
                f"in it (top-level modules: {', '.join(top)})."
            )
    for path in paths:
        holder = inside_attention(dims, path)
        if holder is not None:
            raise ConfigError(
                f"modules_to_save selects {path!r}, inside the nn.MultiheadAttention {holder!r}, which uses its "
                f"weights without calling it, so a copy could not replace it; name {holder!r} instead."
            )
        inner = [p for p in paths if p.startswith(path + ".")]
        if inner:
            raise ConfigError(
                f"modules_to_save selects {path!r} and modules inside it ({', '.join(inner)}); name only the outer "
                "module (its copy includes them)."
            )
    both = sorted(
        t for t in targets if any(t == p or t.startswith(p + ".") or p.startswith(t + ".") for p in paths)
    )
    if both:
        raise ConfigError(
            f"{', '.join(both)} would be both a LoRA target and inside a module of modules_to_save {list(names)}; "
            "a saved module is trained in full, so leave it out of target_modules (exclude_modules) or out of "
            "modules_to_save."
        )
    return paths


def select_biases(
    config: ModuleTargeting, dims: ModelDims, targets: Sequence[str], saved: Sequence[str]
) -> tuple[str, ...]:
    """The paths of the modules whose bias an adapter with ``bias`` (peft's option) keeps a trainable copy of, in
    the model's module order: ``"lora_only"``: its targets (``targets``: their paths) that have a bias; ``"all"``:
    every module with a ``bias`` parameter outside ``saved`` (``modules_to_save``: those copies train whole).
    Raises naming a selected module whose type's use of its bias is not known (the copy could not replace it)."""
    bias = getattr(config, "bias", "none")
    if bias == "none":
        return ()
    if not dims.modules:
        raise ConfigError(
            f"bias={bias!r} keeps copies of the model's biases, but its module list is not known (ModelDims.modules "
            "is empty); add the adapter through the model (model.add_adapter) so its modules can be listed."
        )
    wanted = set(targets)
    attention = [m.path for m in dims.modules if m.attention]
    if attention and (bias == "all" or any(inside_attention(dims, t) or t in attention for t in wanted)):
        raise ConfigError(
            f"bias={bias!r} with the nn.MultiheadAttention {attention[0]!r} in play: it uses its biases "
            "(in_proj_bias, out_proj.bias) without calling a module whose output a held copy could replace. Use "
            "bias='none', or leave the MultiheadAttention out of target_modules (bias='lora_only')."
        )
    chosen: list[str] = []
    for module in dims.modules:
        if not module.bias:
            continue
        if bias == "lora_only" and module.path not in wanted:
            continue
        if bias == "all" and any(module.path == p or module.path.startswith(p + ".") for p in saved):
            continue
        if module.bias_axis is None:
            raise ConfigError(
                f"bias={bias!r} selects the bias of {module.path!r}, a {module.type_name}, whose use of its bias "
                "adapterhub does not know (it holds biases of Linear, Conv1D, layer norms, convolutions, batch and "
                "group norms). Use bias='lora_only' or 'none', or put the module in modules_to_save."
            )
        chosen.append(module.path)
    return tuple(chosen)


def select_tokens(
    config: ModuleTargeting, dims: ModelDims, targets: Sequence[str], saved: Sequence[str]
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """``trainable_token_indices`` (peft's rule) on this model: ``({embedding path: token ids}, {tied head path:
    embedding path})``. A list names rows of the input embeddings (else of the module named ``embed_tokens``); a
    mapping names embeddings by path or path suffix. An output head whose weight is the input embeddings' (tied)
    gets the same rows. Raises for a name that selects no nn.Embedding or several, an id past the vocabulary, and an
    embedding that is also a LoRA target (``targets``) or in ``modules_to_save`` (``saved``)."""
    indices = getattr(config, "trainable_token_indices", None)
    if indices is None:
        return {}, {}
    if not dims.modules:
        raise ConfigError(
            "trainable_token_indices names rows of the model's embeddings, but its module list is not known "
            "(ModelDims.modules is empty); add the adapter through the model (model.add_adapter)."
        )
    embeddings = [m for m in dims.modules if m.embedding]
    rows: dict[str, tuple[int, ...]] = {}
    if indices and isinstance(indices[0], int):
        found = [m for m in embeddings if m.input_embedding] or [
            m for m in embeddings if m.path.rsplit(".", 1)[-1] == "embed_tokens"
        ]
        if len(found) != 1:
            raise ConfigError(
                f"trainable_token_indices={list(indices)} names rows of the input embeddings, which this "
                f"{dims.model_type} model does not single out; name the embedding: {{'<module>': [ids]}} (its "
                f"embeddings: {', '.join(m.path for m in embeddings) or 'none'})."
            )
        rows[found[0].path] = tuple(indices)  # type: ignore[arg-type]
    else:
        for name, ids in indices:  # type: ignore[misc]
            found = [m for m in dims.modules if m.path == name or m.path.endswith("." + name)]
            if len(found) != 1 or not found[0].embedding:
                kinds = ", ".join(f"{m.path} ({m.type_name})" for m in found) or "no module"
                raise ConfigError(
                    f"trainable_token_indices names {name!r}, which selects {kinds}; it must name one nn.Embedding "
                    f"(this model's: {', '.join(m.path for m in embeddings) or 'none'})."
                )
            rows[found[0].path] = tuple(ids)
    by_path = {m.path: m for m in embeddings}
    for path, ids in rows.items():
        vocabulary = by_path[path].d_in
        if max(ids) >= vocabulary:
            raise ConfigError(
                f"trainable_token_indices lists token id {max(ids)} for {path!r}, which has {vocabulary} rows."
            )
        clash = [p for p in (*targets, *saved) if p == path or path.startswith(p + ".")]
        if clash:
            raise ConfigError(
                f"{path!r} is both in trainable_token_indices and a LoRA target or in modules_to_save; train it one "
                "way: leave it out of target_modules / modules_to_save, or drop trainable_token_indices."
            )
    ties = {
        m.path: m.tied_to
        for m in dims.modules
        if m.tied_to in rows
        and by_path[m.tied_to].input_embedding
        and not any(m.path == p or m.path.startswith(p + ".") for p in saved)
    }
    return rows, ties  # type: ignore[return-value]
