"""Composition blocks as data, and the one interpreter that runs them at every adapter site.

A setup is an adapter name (``"sst-2"``) or a block (``Stack("lang", Fuse("a", "b"))``). Blocks are frozen,
hashable, compared by structure and serialisable (``setup_to_json`` / ``setup_from_json``, parameters included).

Semantics at one site (``h``: sub-layer output, ``x``: residual input, ``LN``: the model's LayerNorm there):

- a name: that adapter alone;
- ``Stack(a, b, ...)``: one after another: ``c_0 = h``, adapter k adds ``A_k(x_k)`` to ``c_{k-1}`` where ``x_k`` is
  prepared from ``c_{k-1}`` by its config (Pfeiffer: ``LN(c_{k-1} + x)``); the last one's config decides how ``c_n``
  leaves the site (Pfeiffer: ``LN(c_n + x)``). A ``Fuse`` inside a Stack is one step of it; a ``Split``,
  ``BatchSplit``, ``Parallel`` or ``Average`` may only be the last element and runs on ``h = c_{k-1}``;
- ``Fuse(a, b, ...)``: AdapterFusion (``adapterhub.runtime.fusion``): attention over the adapters' outputs;
- ``Split(a, b, split_index=k)``: positions ``[0, k)`` of the sequence through ``a``, ``[k, T)`` through ``b``
  (several indices for more children: ``split_index=(k1, k2)`` for three; a ``None`` child: those positions go
  through no adapter);
- ``BatchSplit(a, b, batch_sizes=(2, 3))``: rows ``[0, 2)`` of the batch through ``a``, rows ``[2, 5)`` through
  ``b`` in one forward pass (serving: one request per adapter). A ``None`` child of a BatchSplit is a block of
  rows that goes through no adapter (``BatchSplit("a", None, batch_sizes=(2, 1))``: the last row gets the base
  model alone);
- ``Parallel(a, b)``: the whole input through every child, one output per child. The batch is replicated at the
  input of the first layer where a child has an adapter (layers before it run once); the model returns a
  ``ParallelOutput`` (one output per branch, each through the head named like the branch's last adapter);
- ``Average(a, b, weights=(0.7, 0.3))``: ``Σ_i w_i · y_i`` where ``y_i`` is the site output with child ``i`` alone
  (weights normalised to sum 1 unless ``normalize_weights=False``; uniform when omitted).

Where a child has no adapter at a site (e.g. a layer in its ``leave_out``), its part gets the unchanged site value.

Allowed nestings (``name`` = an adapter name; a row lists what may appear inside that block):

===========  ==================================================================================
block        children
===========  ==================================================================================
Stack        name, Stack, Fuse anywhere; Split, BatchSplit, Parallel, Average as the last only
Fuse         name (at least two)
Split        name, Stack, Fuse, Split, BatchSplit, Average
BatchSplit   name, Stack, Fuse, Split, BatchSplit, Average
Parallel     name, Stack, Fuse, Split, BatchSplit, Average (at least two children)
Average      name, Stack, Fuse, Split, BatchSplit
===========  ==================================================================================

``Parallel`` may only be the whole setup or the last element of a top-level ``Stack``.

This module is data only (no torch): ``adapterhub.runtime.interpreter`` runs a setup at every attachment point, asking each
adapter method what it can do (``adapterhub.methods.base``); ``adapterhub.runtime.parallel`` runs the ``Parallel`` batch
replication and per-branch heads.
"""

from __future__ import annotations

import ast
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from adapterhub.errors import ConfigError, did_you_mean

Setup = Union[str, "Block"]


def _name_list(children: Sequence[Any]) -> str:
    return ", ".join(repr(c) for c in children)


@dataclass(frozen=True, init=False)
class Block:
    """Base of composition blocks: ordered children that are names or blocks."""

    children: tuple[Setup, ...]
    allowed_children: ClassVar[tuple[type, ...]] = ()
    min_children: ClassVar[int] = 1
    none_children: ClassVar[bool] = False  # whether None (no adapter) may be a child

    def __init__(self, *children: Setup | Sequence[Setup]) -> None:
        flat: list[Setup] = []
        for child in children:
            if isinstance(child, (list, tuple)):
                flat.extend(child)
            else:
                flat.append(child)  # type: ignore[arg-type]
        object.__setattr__(self, "children", tuple(flat))
        self.validate()

    def validate(self) -> None:
        kind = type(self).__name__
        if len(self.children) < self.min_children:
            raise ConfigError(
                f"{kind}() needs at least {self.min_children} adapter(s), got {len(self.children)}."
            )
        for child in self.children:
            if child is None and self.none_children:
                continue
            if isinstance(child, str):
                if not child:
                    raise ConfigError(f"{kind} got an empty adapter name.")
                continue
            if not isinstance(child, Block):
                raise ConfigError(
                    f"{kind} takes adapter names or blocks, got {type(child).__name__}: {child!r}."
                )
            if not isinstance(child, self.allowed_children):
                allowed = ", ".join(c.__name__ for c in self.allowed_children) or "only adapter names"
                raise ConfigError(
                    f"{type(child).__name__} cannot be nested in {kind}; allowed inside {kind}: {allowed} "
                    "(see the nesting table in adapterhub.spec.composition)."
                )
            if not isinstance(self, Stack) and _contains(child, Parallel):
                raise ConfigError(
                    f"Parallel cannot be nested in {kind}: it must be the whole setup or the last element of a "
                    "top-level Stack."
                )

    def params(self) -> dict[str, Any]:
        """The block's parameters besides its children (JSON-ready)."""
        return {}

    def names(self) -> list[str]:
        """Every adapter name in the block, depth first, without repeats."""
        return list(dict.fromkeys(_walk_names(self)))

    def last(self) -> str:
        named = [c for c in self.children if c is not None]
        if not named:
            raise ConfigError(f"{self!r} names no adapter, so it has no last adapter (and no head).")
        child = named[-1]
        return child if isinstance(child, str) else child.last()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "children": [c if c is None or isinstance(c, str) else c.to_dict() for c in self.children],
            **self.params(),
        }

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({_name_list(self.children)}{extra})"


@dataclass(frozen=True, init=False, repr=False)
class Stack(Block):
    """Adapters applied one after another in each layer (a language adapter under a task adapter)."""

    def validate(self) -> None:
        super().validate()
        flat = flatten_stack(self)
        for child in flat[:-1]:
            if isinstance(child, LAST_ONLY_IN_STACK):
                raise ConfigError(
                    f"{type(child).__name__} can only be the last element of a Stack (it ends the site's "
                    f"computation); got it before {flat[-1]!r} in {self!r}."
                )


@dataclass(frozen=True, init=False, repr=False)
class Fuse(Block):
    """AdapterFusion over the listed adapters (``model.add_adapter_fusion(Fuse(...))`` creates its weights)."""

    min_children = 2

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """The fused adapters' names (a Fuse holds names only)."""
        return tuple(str(child) for child in self.children)

    @property
    def fusion_name(self) -> str:
        """The key of this fusion's weights: the adapter names joined by commas (as the `adapters` library)."""
        return ",".join(self.adapter_names)


@dataclass(frozen=True, init=False, repr=False)
class Split(Block):
    """Different adapters on different parts of the sequence: child ``i`` gets positions
    ``[split_index[i-1], split_index[i])`` (the first from 0, the last to the end); a ``None`` child's positions go
    through no adapter (a packed row's base-model segment, ``runtime/packing``)."""

    split_index: tuple[int, ...] = ()
    min_children = 2
    none_children = True

    def __init__(self, *children: Setup | Sequence[Setup], split_index: int | Sequence[int]) -> None:
        indices = (split_index,) if isinstance(split_index, int) else tuple(split_index)
        object.__setattr__(self, "split_index", indices)
        super().__init__(*children)

    def validate(self) -> None:
        super().validate()
        indices = self.split_index
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise ConfigError(f"Split split_index must be integers, got {indices!r}.")
        if len(indices) != len(self.children) - 1:
            raise ConfigError(
                f"Split over {len(self.children)} children needs {len(self.children) - 1} split index(es) "
                f"(where each part after the first starts), got {list(indices)}."
            )
        if any(i <= 0 for i in indices) or any(b <= a for a, b in itertools.pairwise(indices)):
            raise ConfigError(f"Split split_index must be positive and increasing, got {list(indices)}.")

    def params(self) -> dict[str, Any]:
        return {"split_index": list(self.split_index)}


@dataclass(frozen=True, init=False, repr=False)
class BatchSplit(Block):
    """Different adapters for different rows of one batch: child ``i`` gets the next ``batch_sizes[i]`` rows; a
    ``None`` child's rows go through no adapter (the base model alone)."""

    batch_sizes: tuple[int, ...] = ()
    none_children = True

    def __init__(self, *children: Setup | Sequence[Setup], batch_sizes: Sequence[int]) -> None:
        object.__setattr__(self, "batch_sizes", tuple(batch_sizes))
        super().__init__(*children)

    def validate(self) -> None:
        super().validate()
        sizes = self.batch_sizes
        if len(sizes) != len(self.children):
            raise ConfigError(
                f"BatchSplit over {len(self.children)} children needs one batch size per child, got {list(sizes)}."
            )
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes):
            raise ConfigError(f"BatchSplit batch_sizes must be non-negative integers, got {list(sizes)}.")

    def params(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.batch_sizes)}


@dataclass(frozen=True, init=False, repr=False)
class Parallel(Block):
    """The same input through every child at once, one output (and head) per child."""

    min_children = 2


@dataclass(frozen=True, init=False, repr=False)
class Average(Block):
    """Weighted average of the children's site outputs (uniform weights when none are given)."""

    weights: tuple[float, ...] | None = None
    normalize_weights: bool = True

    def __init__(
        self,
        *children: Setup | Sequence[Setup],
        weights: Sequence[float] | None = None,
        normalize_weights: bool = True,
    ) -> None:
        object.__setattr__(self, "weights", None if weights is None else tuple(float(w) for w in weights))
        object.__setattr__(self, "normalize_weights", bool(normalize_weights))
        super().__init__(*children)

    def validate(self) -> None:
        super().validate()
        if self.weights is not None:
            if len(self.weights) != len(self.children):
                raise ConfigError(
                    f"Average over {len(self.children)} children needs one weight per child, got "
                    f"{list(self.weights)}."
                )
            if self.normalize_weights and abs(sum(self.weights)) < 1e-12:
                raise ConfigError(f"Average weights sum to 0 and cannot be normalised: {list(self.weights)}.")

    def effective_weights(self) -> list[float]:
        weights = list(self.weights) if self.weights is not None else [1.0] * len(self.children)
        if self.normalize_weights:
            total = sum(weights)
            weights = [w / total for w in weights]
        return weights

    def params(self) -> dict[str, Any]:
        return {
            "weights": None if self.weights is None else list(self.weights),
            "normalize_weights": self.normalize_weights,
        }


_COMMON = (Stack, Fuse, Split, BatchSplit, Average)
LAST_ONLY_IN_STACK = (Split, BatchSplit, Parallel, Average)
Stack.allowed_children = (Stack, Fuse, Split, BatchSplit, Parallel, Average)
Fuse.allowed_children = ()
Split.allowed_children = _COMMON
BatchSplit.allowed_children = _COMMON
Parallel.allowed_children = _COMMON
Average.allowed_children = (Stack, Fuse, Split, BatchSplit)
BLOCK_TYPES: dict[str, type[Block]] = {
    cls.__name__: cls for cls in (Stack, Fuse, Split, BatchSplit, Parallel, Average)
}


def nesting_table() -> dict[str, list[str]]:
    """Block -> what may be nested in it (``"name"`` = an adapter name)."""
    return {name: ["name", *(c.__name__ for c in cls.allowed_children)] for name, cls in BLOCK_TYPES.items()}


def _walk_names(setup: Setup | None) -> Iterator[str]:
    if setup is None:
        return
    if isinstance(setup, str):
        yield setup
    else:
        for child in setup.children:
            yield from _walk_names(child)


def _contains(setup: Setup | None, kind: type) -> bool:
    if setup is None or isinstance(setup, str):
        return False
    return isinstance(setup, kind) or any(_contains(c, kind) for c in setup.children)


def flatten_stack(block: Stack) -> list[Setup]:
    """A Stack's children with nested Stacks inlined."""
    out: list[Setup] = []
    for child in block.children:
        out.extend(flatten_stack(child) if isinstance(child, Stack) else [child])
    return out


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


def setup_to_dict(setup: Setup | None) -> Any:
    return None if setup is None else setup if isinstance(setup, str) else setup.to_dict()


def setup_to_json(setup: Setup | None) -> str:
    return json.dumps(setup_to_dict(setup))


def setup_from_dict(data: Any) -> Setup | None:
    if data is None or isinstance(data, str):
        return data
    if not isinstance(data, Mapping) or "type" not in data or "children" not in data:
        raise ConfigError(f"Not a serialised adapter setup: {data!r}.")
    kind = data["type"]
    if kind not in BLOCK_TYPES:
        raise ConfigError(f"Unknown block type {kind!r}{did_you_mean(str(kind), BLOCK_TYPES)}.")
    extra = {k: v for k, v in data.items() if k not in ("type", "children")}
    try:
        children = [setup_from_dict(c) for c in data["children"]]
        return BLOCK_TYPES[kind](*children, **extra)  # type: ignore[arg-type]
    except TypeError as error:
        raise ConfigError(f"Bad parameters for {kind} in a serialised setup: {error}.") from None


def setup_from_json(text: str) -> Setup | None:
    return setup_from_dict(json.loads(text))


def parallel_block(setup: Setup | None) -> Parallel | None:
    """The Parallel block of a setup (the whole setup or the last element of a top-level Stack), else None."""
    if isinstance(setup, Parallel):
        return setup
    if isinstance(setup, Stack):
        last = flatten_stack(setup)[-1]
        return last if isinstance(last, Parallel) else None
    return None


def branch_names(block: Parallel) -> list[str]:
    """One name per branch: the branch's last adapter (its head is the head of that name)."""
    return [c if isinstance(c, str) else c.last() for c in block.children]


def fuse_blocks(setup: Setup | None) -> list[Fuse]:
    """Every ``Fuse`` block in ``setup``, depth first."""
    if isinstance(setup, Fuse):
        return [setup]
    if setup is None or isinstance(setup, str):
        return []
    return [f for child in setup.children for f in fuse_blocks(child)]


def blocks_with_parents(setup: Setup | None) -> Iterator[tuple[Block, Setup]]:
    """``(block, child)`` for every child of every block in ``setup`` (used to check what each method supports)."""
    if setup is None or isinstance(setup, str):
        return
    for child in setup.children:
        yield setup, child
        yield from blocks_with_parents(child)


_BLOCK_NAMES = ("Stack", "Fuse", "Split", "BatchSplit", "Parallel", "Average")


def parse_setup(text: str) -> Any:
    """Parse ``Stack("a", Fuse("b", "c"))``-style text safely (only block calls and literals are allowed)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ConfigError(f"Cannot parse setup {text!r}: {error.msg}.") from None

    def build(node: ast.AST) -> Any:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _BLOCK_NAMES:
            block = globals()[node.func.id]
            return block(
                *[build(a) for a in node.args], **{k.arg: build(k.value) for k in node.keywords if k.arg}
            )
        if isinstance(node, (ast.List, ast.Tuple)):
            return [build(e) for e in node.elts]
        if isinstance(node, ast.Constant) and (
            node.value is None or isinstance(node.value, (str, int, float, bool))
        ):
            return node.value
        raise ConfigError(
            f"Unexpected {ast.dump(node)[:60]} in setup {text!r}; use {', '.join(_BLOCK_NAMES)} and names."
        )

    return build(tree.body)
