"""Composition blocks as data, and the one interpreter that runs them at every adapter site.

A setup is an adapter name (``"sst-2"``) or a block (``Stack("lang", "task")``). Blocks are frozen, hashable,
compared by structure and serialisable (``to_json`` / ``from_json``). Semantics at each site:

- a name: that adapter alone;
- ``Stack(a, b, ...)``: the adapters one after another in the same site: ``c_0 = h``, adapter k adds
  ``A_k(x_k)`` to ``c_{k-1}`` where ``x_k`` is prepared from ``c_{k-1}`` by its config (Pfeiffer:
  ``LN(c_{k-1} + input)``), and the last one's config decides how ``c_n`` leaves the site.

Interpreters for more block types are registered in ``RUNNERS`` (one function per block type).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import torch

from adapterhub.errors import AdapterNotFoundError, ConfigError, did_you_mean
from adapterhub.methods.base import AdapterModule, SiteInputs

Setup = Union[str, "Block"]


@dataclass(frozen=True, init=False)
class Block:
    """Base of composition blocks: ordered children that are names or blocks."""

    children: tuple[Setup, ...]
    allowed_children: ClassVar[tuple[type, ...]] = ()

    def __init__(self, *children: Setup | Sequence[Setup]) -> None:
        flat: list[Setup] = []
        for child in children:
            if isinstance(child, (list, tuple)):
                flat.extend(child)
            else:
                flat.append(child)
        object.__setattr__(self, "children", tuple(flat))
        self.validate()

    def validate(self) -> None:
        if not self.children:
            raise ConfigError(f"{type(self).__name__}() needs at least one adapter.")
        for child in self.children:
            if isinstance(child, str):
                continue
            if not isinstance(child, Block):
                raise ConfigError(
                    f"{type(self).__name__} takes adapter names or blocks, got {type(child).__name__}: {child!r}."
                )
            if not isinstance(child, self.allowed_children):
                allowed = ", ".join(c.__name__ for c in self.allowed_children) or "only adapter names"
                raise ConfigError(
                    f"{type(child).__name__} cannot be nested in {type(self).__name__}; allowed inside it: {allowed}."
                )

    def names(self) -> list[str]:
        """Every adapter name in the block, depth first, without repeats."""
        return list(dict.fromkeys(_walk_names(self)))

    def first(self) -> str:
        return self.names()[0]

    def last(self) -> str:
        child = self.children[-1]
        return child if isinstance(child, str) else child.last()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "children": [c if isinstance(c, str) else c.to_dict() for c in self.children],
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(c) for c in self.children)})"


@dataclass(frozen=True, init=False, repr=False)
class Stack(Block):
    """Adapters applied one after another in each layer (a language adapter under a task adapter)."""


Stack.allowed_children = (Stack,)
BLOCK_TYPES: dict[str, type[Block]] = {"Stack": Stack}


def _walk_names(setup: Setup) -> Iterator[str]:
    if isinstance(setup, str):
        yield setup
    else:
        for child in setup.children:
            yield from _walk_names(child)


def setup_names(setup: Setup | None) -> list[str]:
    if setup is None:
        return []
    return [setup] if isinstance(setup, str) else setup.names()


def normalize_setup(value: Any) -> Setup | None:
    """Accept a name, a list of names (a Stack), a block, or None (nothing active)."""
    if value is None or isinstance(value, (str, Block)):
        return value
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return normalize_setup(value[0])
        return Stack(*value) if value else None
    raise ConfigError(
        f"An adapter setup is a name, a list of names or a block like Stack('a', 'b'); got {value!r}."
    )


def setup_to_json(setup: Setup | None) -> str:
    return json.dumps(None if setup is None else setup if isinstance(setup, str) else setup.to_dict())


def setup_from_dict(data: Any) -> Setup | None:
    if data is None or isinstance(data, str):
        return data
    if not isinstance(data, Mapping) or "type" not in data or "children" not in data:
        raise ConfigError(f"Not a serialised adapter setup: {data!r}.")
    kind = data["type"]
    if kind not in BLOCK_TYPES:
        raise ConfigError(f"Unknown block type {kind!r}{did_you_mean(str(kind), BLOCK_TYPES)}.")
    extra = {k: v for k, v in data.items() if k not in ("type", "children")}
    return BLOCK_TYPES[kind](*[setup_from_dict(c) for c in data["children"]], **extra)


def setup_from_json(text: str) -> Setup | None:
    return setup_from_dict(json.loads(text))


# ------------------------------------------------------------------------------------------------ interpreter

Runner = Callable[["SiteRun", Any, SiteInputs], "torch.Tensor | None"]
RUNNERS: dict[type, Runner] = {}


@dataclass
class SiteRun:
    """One site of one forward pass: where we are and what can be run there."""

    layer: int
    site: str
    adapters: Mapping[str, AdapterModule]
    extras: dict[str, Any]

    def adapter(self, name: str) -> AdapterModule:
        if name not in self.adapters:
            raise AdapterNotFoundError(
                f"Adapter {name!r} is in the active setup but not on this model{did_you_mean(name, self.adapters)}."
            )
        return self.adapters[name]

    def present(self, name: str) -> bool:
        return self.site in self.adapter(name).sites_at(self.layer)


def run_setup(run: SiteRun, setup: Setup, inputs: SiteInputs) -> torch.Tensor | None:
    """The replacement value for the site's output under ``setup``, or None when no adapter sits there."""
    if isinstance(setup, str):
        if not run.present(setup):
            return None
        return run.adapter(setup).forward_site(run.layer, run.site, inputs)
    runner = RUNNERS.get(type(setup))
    if runner is None:
        raise ConfigError(f"No interpreter for {type(setup).__name__} blocks.")
    return runner(run, setup, inputs)


def _run_stack(run: SiteRun, block: Stack, inputs: SiteInputs) -> torch.Tensor | None:
    """``c_0 = h``; each adapter k prepares its input from ``c_{k-1}`` by its own config (e.g.
    ``LN(c_{k-1} + input)``) and adds to ``c_{k-1}``; the last adapter's config decides how ``c_n`` leaves."""
    from adapterhub.methods.bottleneck import BottleneckAdapter, enter_site, leave_site

    names = [n for n in block.names() if run.present(n)]
    if not names:
        return None
    modules = [run.adapter(n) for n in names]
    if not all(isinstance(m, BottleneckAdapter) for m in modules):
        raise ConfigError("Stack currently composes bottleneck adapters only.")
    hidden = inputs.h
    for module in modules:
        state = enter_site(module.config, SiteInputs(hidden, inputs.residual, inputs.norm))  # type: ignore[arg-type]
        hidden = module.layer_at(run.layer, run.site)(state.x, state.adapter_residual)  # type: ignore[attr-defined]
    last = modules[-1]
    return leave_site(last.config, hidden, inputs, last.dims.pre_norm)  # type: ignore[arg-type]


RUNNERS[Stack] = _run_stack  # type: ignore[assignment]
