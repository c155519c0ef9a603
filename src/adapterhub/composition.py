"""Composition blocks as data, and the one interpreter that runs them at every adapter site.

A setup is an adapter name (``"sst-2"``) or a block (``Stack("lang", Fuse("a", "b"))``). Blocks are frozen,
hashable, compared by structure and serialisable (``setup_to_json`` / ``setup_from_json``, parameters included).

Semantics at one site (``h``: sub-layer output, ``x``: residual input, ``LN``: the model's LayerNorm there):

- a name: that adapter alone;
- ``Stack(a, b, ...)``: one after another: ``c_0 = h``, adapter k adds ``A_k(x_k)`` to ``c_{k-1}`` where ``x_k`` is
  prepared from ``c_{k-1}`` by its config (Pfeiffer: ``LN(c_{k-1} + x)``); the last one's config decides how ``c_n``
  leaves the site (Pfeiffer: ``LN(c_n + x)``). A ``Fuse`` inside a Stack is one step of it; a ``Split``,
  ``BatchSplit``, ``Parallel`` or ``Average`` may only be the last element and runs on ``h = c_{k-1}``;
- ``Fuse(a, b, ...)``: AdapterFusion (``adapterhub.fusion``): attention over the adapters' outputs;
- ``Split(a, b, split_index=k)``: positions ``[0, k)`` of the sequence through ``a``, ``[k, T)`` through ``b``
  (several indices for more children: ``split_index=(k1, k2)`` for three);
- ``BatchSplit(a, b, batch_sizes=(2, 3))``: rows ``[0, 2)`` of the batch through ``a``, rows ``[2, 5)`` through
  ``b`` in one forward pass (serving: one request per adapter);
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

``RUNNERS`` maps a block type to its interpreter ``(SiteRun, block, SiteInputs) -> Tensor | None`` (the value that
replaces the site's output, or None when none of the block's adapters sits there).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Union

import torch
from torch import nn

from adapterhub.errors import AdapterNotFoundError, ConfigError, did_you_mean
from adapterhub.methods.base import AdapterModule, SiteInputs

if TYPE_CHECKING:
    from adapterhub.model import AdapterStore

Setup = Union[str, "Block"]


def _name_list(children: Sequence[Any]) -> str:
    return ", ".join(repr(c) for c in children)


@dataclass(frozen=True, init=False)
class Block:
    """Base of composition blocks: ordered children that are names or blocks."""

    children: tuple[Setup, ...]
    allowed_children: ClassVar[tuple[type, ...]] = ()
    min_children: ClassVar[int] = 1

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
        kind = type(self).__name__
        if len(self.children) < self.min_children:
            raise ConfigError(
                f"{kind}() needs at least {self.min_children} adapter(s), got {len(self.children)}."
            )
        for child in self.children:
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
                    "(see the nesting table in adapterhub.composition)."
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

    def first(self) -> str:
        return self.names()[0]

    def last(self) -> str:
        child = self.children[-1]
        return child if isinstance(child, str) else child.last()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "children": [c if isinstance(c, str) else c.to_dict() for c in self.children],
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
        flat = _flatten_stack(self)
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
    def fusion_name(self) -> str:
        """The key of this fusion's weights: the adapter names joined by commas (as the `adapters` library)."""
        return ",".join(self.children)  # type: ignore[arg-type]


@dataclass(frozen=True, init=False, repr=False)
class Split(Block):
    """Different adapters on different parts of the sequence: child ``i`` gets positions
    ``[split_index[i-1], split_index[i])`` (the first from 0, the last to the end)."""

    split_index: tuple[int, ...] = ()
    min_children = 2

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
    """Different adapters for different rows of one batch: child ``i`` gets the next ``batch_sizes[i]`` rows."""

    batch_sizes: tuple[int, ...] = ()

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


def _walk_names(setup: Setup) -> Iterator[str]:
    if isinstance(setup, str):
        yield setup
    else:
        for child in setup.children:
            yield from _walk_names(child)


def _contains(setup: Setup, kind: type) -> bool:
    if isinstance(setup, str):
        return False
    return isinstance(setup, kind) or any(_contains(c, kind) for c in setup.children)


def _flatten_stack(block: Stack) -> list[Setup]:
    out: list[Setup] = []
    for child in block.children:
        out.extend(_flatten_stack(child) if isinstance(child, Stack) else [child])
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
        return BLOCK_TYPES[kind](*[setup_from_dict(c) for c in data["children"]], **extra)
    except TypeError as error:
        raise ConfigError(f"Bad parameters for {kind} in a serialised setup: {error}.") from None


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


def base_value(inputs: SiteInputs) -> torch.Tensor:
    """What the site computes with no adapter: ``LN(h + x)`` (post-norm) or ``h`` (pre-norm)."""
    if inputs.norm is None:
        return inputs.h
    return inputs.original_output()


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


def _slice_inputs(inputs: SiteInputs, index: Any) -> SiteInputs:
    normed = inputs.normed[index] if inputs.normed is not None else None
    return SiteInputs(inputs.h[index], inputs.residual[index], inputs.norm, normed)


def _run_or_base(run: SiteRun, setup: Setup, inputs: SiteInputs) -> tuple[torch.Tensor, bool]:
    out = run_setup(run, setup, inputs)
    return (base_value(inputs), False) if out is None else (out, True)


# ---- Stack


def _step(
    run: SiteRun, child: Setup, hidden: torch.Tensor, inputs: SiteInputs
) -> tuple[torch.Tensor, Any] | None:
    """One step of a Stack on the running value ``hidden``: the new running value and the adapter whose config
    leaves the site, or None when ``child`` has no adapter here."""
    from adapterhub.methods.bottleneck import BottleneckAdapter, enter_site

    # The model's own LayerNorm output belongs to its own h: only the first step of a Stack may reuse it.
    step_inputs = SiteInputs(
        hidden, inputs.residual, inputs.norm, inputs.normed if hidden is inputs.h else None
    )
    if isinstance(child, Fuse):
        from adapterhub.fusion import fuse_step

        return fuse_step(run, child, step_inputs)
    assert isinstance(child, str)
    if not run.present(child):
        return None
    module = run.adapter(child)
    if not isinstance(module, BottleneckAdapter):
        raise ConfigError(
            f"Stack composes bottleneck adapters; {child!r} is a {module.config.method} adapter."
        )
    state = enter_site(module.config, step_inputs)
    return module.layer_at(run.layer, run.site)(state.x, state.adapter_residual), module


def _run_stack(run: SiteRun, block: Stack, inputs: SiteInputs) -> torch.Tensor | None:
    """``c_0 = h``; each adapter k prepares its input from ``c_{k-1}`` by its own config (e.g.
    ``LN(c_{k-1} + input)``) and adds to ``c_{k-1}``; the last adapter's config decides how ``c_n`` leaves. A
    final Split/BatchSplit/Parallel/Average runs on ``h = c_{k-1}`` and returns the site value itself."""
    from adapterhub.methods.bottleneck import leave_site

    flat = _flatten_stack(block)
    hidden, last = inputs.h, None
    for child in flat:
        if isinstance(child, LAST_ONLY_IN_STACK):
            normed = inputs.normed if hidden is inputs.h else None
            out = run_setup(run, child, SiteInputs(hidden, inputs.residual, inputs.norm, normed))
            if out is not None or last is None:
                return out
            break
        step = _step(run, child, hidden, inputs)
        if step is not None:
            hidden, last = step
    if last is None:
        return None
    return leave_site(last.config, hidden, inputs, last.dims.pre_norm)


def _run_fuse(run: SiteRun, block: Fuse, inputs: SiteInputs) -> torch.Tensor | None:
    from adapterhub.fusion import fuse_step
    from adapterhub.methods.bottleneck import leave_site

    step = fuse_step(run, block, inputs)
    if step is None:
        return None
    hidden, last = step
    return leave_site(last.config, hidden, inputs, last.dims.pre_norm)


# ---- Split / BatchSplit / Average / Parallel


def _run_chunks(
    run: SiteRun, children: Sequence[Setup], bounds: Sequence[tuple[int, int]], inputs: SiteInputs, dim: int
) -> torch.Tensor | None:
    """Run child ``i`` on ``[start_i, end_i)`` along ``dim`` (0 = rows, 1 = positions) and concatenate."""
    if not any(run.present(name) for child in children for name in _walk_names(child)):
        return None  # none of the children sits here: leave the site alone
    parts, any_adapter = [], False
    for child, (start, end) in zip(children, bounds, strict=True):
        if end <= start:
            continue
        index = (slice(start, end),) if dim == 0 else (slice(None), slice(start, end))
        out, ran = _run_or_base(run, child, _slice_inputs(inputs, index))
        parts.append(out)
        any_adapter = any_adapter or ran
    if not any_adapter:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _run_split(run: SiteRun, block: Split, inputs: SiteInputs) -> torch.Tensor | None:
    length = inputs.h.shape[1]
    edges = [0, *(min(i, length) for i in block.split_index), length]
    return _run_chunks(run, block.children, list(itertools.pairwise(edges)), inputs, dim=1)


def _run_batch_split(run: SiteRun, block: BatchSplit, inputs: SiteInputs) -> torch.Tensor | None:
    rows = inputs.h.shape[0]
    if sum(block.batch_sizes) != rows:
        raise ConfigError(
            f"BatchSplit batch_sizes {list(block.batch_sizes)} sum to {sum(block.batch_sizes)}, but the batch has "
            f"{rows} rows; give one size per adapter that adds up to the batch size."
        )
    grouped = _batch_split_grouped(run, block, inputs)
    if grouped is not None:
        return grouped
    edges = [0]
    for size in block.batch_sizes:
        edges.append(edges[-1] + size)
    return _run_chunks(run, block.children, list(itertools.pairwise(edges)), inputs, dim=0)


def _batch_split_grouped(run: SiteRun, block: BatchSplit, inputs: SiteInputs) -> torch.Tensor | None:
    """BatchSplit over plain bottleneck adapters that all sit here, are placed alike (same ``original_ln_before``,
    ``residual_before_ln``, ``original_ln_after``, no adapter-internal LayerNorm) and pass ``can_group``: one
    computation for the whole batch (enter the site once, the K adapters as batched matmuls over their rows,
    leave once) instead of K slices, K LayerNorms and a concatenation. Children with no rows are left out. None
    when that does not apply."""
    from adapterhub.methods.bottleneck import (
        BottleneckAdapter,
        batch_split_deltas,
        can_group,
        enter_site,
        leave_site,
    )

    # children with no rows take no part (so that their parameters get no gradient, not even a zero one)
    used = [(name, size) for name, size in zip(block.children, block.batch_sizes, strict=True) if size > 0]
    names, sizes = [name for name, _ in used], [size for _, size in used]
    if not all(isinstance(name, str) and run.present(name) for name in names):
        return None
    modules = [run.adapter(name) for name in names]  # type: ignore[arg-type]
    if not all(isinstance(module, BottleneckAdapter) for module in modules):
        return None
    placements = {
        (m.config.original_ln_before, m.config.residual_before_ln, m.config.original_ln_after)
        for m in modules
    }
    layers = [m.layer_at(run.layer, run.site) for m in modules]  # type: ignore[attr-defined]
    if len(placements) != 1 or not can_group(layers) or any(layer.norm_after is not None for layer in layers):
        return None
    config, pre_norm = modules[0].config, modules[0].dims.pre_norm
    state = enter_site(config, inputs)  # type: ignore[arg-type]
    y = batch_split_deltas(layers, state.x, sizes) + state.adapter_residual  # (B, T, d)
    return leave_site(config, y, inputs, pre_norm)  # type: ignore[arg-type]


def _run_average(run: SiteRun, block: Average, inputs: SiteInputs) -> torch.Tensor | None:
    if not any(run.present(name) for name in block.names()):
        return None
    total, any_adapter = None, False
    for child, weight in zip(block.children, block.effective_weights(), strict=True):
        out, ran = _run_or_base(run, child, inputs)
        any_adapter = any_adapter or ran
        total = out * weight if total is None else total + out * weight
    return total if any_adapter else None


def _run_parallel(run: SiteRun, block: Parallel, inputs: SiteInputs) -> torch.Tensor | None:
    """Rows ``[i·B, (i+1)·B)`` of the replicated batch belong to branch ``i``."""
    n, rows = len(block.children), inputs.h.shape[0]
    state = _parallel_state(run.adapters)
    batch = state.get("batch") if state else None
    if batch is None or rows != n * batch:
        if not any(run.present(name) for name in block.names()):
            return None
        raise ConfigError(
            f"Parallel with {n} branches expected a replicated batch of {n} x B rows at layer {run.layer}, got "
            f"{rows}. Run the whole model (not a sub-module) so that adapterhub can replicate the batch."
        )
    bounds = [(i * batch, (i + 1) * batch) for i in range(n)]
    return _run_chunks(run, block.children, bounds, inputs, dim=0)


RUNNERS.update(
    {
        Stack: _run_stack,  # type: ignore[dict-item]
        Fuse: _run_fuse,  # type: ignore[dict-item]
        Split: _run_split,  # type: ignore[dict-item]
        BatchSplit: _run_batch_split,  # type: ignore[dict-item]
        Average: _run_average,  # type: ignore[dict-item]
        Parallel: _run_parallel,  # type: ignore[dict-item]
    }
)


# ------------------------------------------------------------------------------------------------ Parallel
# The batch is replicated when it enters the first layer holding an adapter of the Parallel block (a forward
# pre-hook on every layer repeats each batch-sized tensor argument: hidden states, attention masks, position
# embeddings). The model's output is then split per branch into a ``ParallelOutput``.

_LOCAL = threading.local()


def _parallel_state(adapters: Any) -> dict[str, Any] | None:
    """This thread's Parallel pass of the model whose adapter dict is ``adapters`` (None outside one)."""
    states = getattr(_LOCAL, "states", None)
    return None if states is None else states.get(id(adapters))


def _set_parallel_state(adapters: Any, state: dict[str, Any] | None) -> None:
    states = getattr(_LOCAL, "states", None)
    if states is None:
        states = _LOCAL.states = {}
    if state is None:
        states.pop(id(adapters), None)
    else:
        states[id(adapters)] = state


@contextlib.contextmanager
def parallel_generation(adapters: Any, branches: int) -> Iterator[None]:
    """While generating under ``Parallel``: the caller has already repeated the batch ``branches`` times (rows
    ``[i·B, (i+1)·B)`` are branch ``i``), so the layers do not replicate it and the model returns one output with
    ``branches · B`` rows (each branch's rows through its own head) that ``generate()`` can use."""
    flags = getattr(_LOCAL, "generating", None)
    if flags is None:
        flags = _LOCAL.generating = {}
    flags[id(adapters)] = branches
    try:
        yield
    finally:
        flags.pop(id(adapters), None)


_BATCH_INPUTS = ("inputs", "input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


def _repeat_rows(value: Any, n: int) -> Any:
    """``(B, ...) -> (n·B, ...)``: the batch once per branch (tensors only)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1:
        return value.repeat(n, *([1] * (value.dim() - 1)))
    return value


class ParallelGenerationMixin:
    """``generate()`` under ``Parallel``: given to models that can generate (``adapterhub.init``, or when a
    causal-LM head gives a bare decoder ``generate``)."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``transformers`` generation; under a ``Parallel`` setup of ``n`` branches every row of the batch is
        generated by each branch: the result has ``n · B`` rows, rows ``[i·B, (i+1)·B)`` from branch ``i``
        (each branch through the head named like it, else the model's built-in LM head)."""
        store = self._store  # type: ignore[attr-defined]
        block = parallel_block(store.current_setup())
        parent = super().generate  # type: ignore[misc]
        if block is None:
            return parent(*args, **kwargs)
        n = len(block.children)
        args = tuple(_repeat_rows(value, n) for value in args)
        kwargs = {
            key: _repeat_rows(value, n) if key in _BATCH_INPUTS else value for key, value in kwargs.items()
        }
        with parallel_generation(store.adapters, n):
            return parent(*args, **kwargs)


def _generating(adapters: Any) -> int | None:
    flags = getattr(_LOCAL, "generating", None)
    return None if flags is None else flags.get(id(adapters))


def parallel_block(setup: Setup | None) -> Parallel | None:
    """The Parallel block of a setup (the whole setup or the last element of a top-level Stack), else None."""
    if isinstance(setup, Parallel):
        return setup
    if isinstance(setup, Stack):
        last = _flatten_stack(setup)[-1]
        return last if isinstance(last, Parallel) else None
    return None


def branch_names(block: Parallel) -> list[str]:
    """One name per branch: the branch's last adapter (its head is the head of that name)."""
    return [c if isinstance(c, str) else c.last() for c in block.children]


def _repeat_batch(value: Any, batch: int, n: int) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == batch:
            return value.repeat(n, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_repeat_batch(v, batch, n) for v in value)
    if isinstance(value, list):
        return [_repeat_batch(v, batch, n) for v in value]
    return value


class _ParallelLayerHook:
    """Forward pre-hook on layer ``index``: start a Parallel pass at layer 0, replicate from its first layer."""

    def __init__(self, store: AdapterStore, index: int) -> None:
        self.store, self.index = store, index

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        block = parallel_block(self.store.current_setup())
        if block is None:
            return None
        if self.index == 0:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(hidden, torch.Tensor):
                return None
            n = len(block.children)
            if _generating(self.store.adapters):  # the batch arrives replicated: nothing to repeat
                _set_parallel_state(self.store.adapters, {"batch": hidden.shape[0] // n, "n": n, "first": 0})
                return None
            _set_parallel_state(
                self.store.adapters, {"batch": hidden.shape[0], "n": n, "first": self._first_layer(block)}
            )
        if _generating(self.store.adapters):
            return None
        state = _parallel_state(self.store.adapters)
        if state is None or self.index < state["first"]:
            return None
        batch, n = state["batch"], state["n"]
        return _repeat_batch(args, batch, n), {k: _repeat_batch(v, batch, n) for k, v in kwargs.items()}

    def _first_layer(self, block: Parallel) -> int:
        adapters = self.store.adapters
        layers = [
            i
            for name in block.names()
            if name in adapters
            for i in range(adapters[name].dims.num_layers)
            if adapters[name].sites_at(i)
        ]
        return min(layers) if layers else 0


class _StashLabels:
    """Model pre-hook (runs first): under Parallel, take ``labels`` (and a multiple-choice ``choice_mask``) away
    from the model's own head; the branches' heads get them."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.store.parallel_labels = self.store.parallel_choice_mask = None  # type: ignore[attr-defined]
        if parallel_block(self.store.current_setup()) is None or not {"labels", "choice_mask"} & set(kwargs):
            return None
        kwargs = dict(kwargs)
        self.store.parallel_labels = kwargs.pop("labels", None)  # type: ignore[attr-defined]
        self.store.parallel_choice_mask = kwargs.pop("choice_mask", None)  # type: ignore[attr-defined]
        return args, kwargs


class _CaptureForParallel:
    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if parallel_block(self.store.current_setup()) is not None:
            self.store.parallel_base_output = output  # type: ignore[attr-defined]


class _ParallelOutputHook:
    def __init__(self, model: nn.Module, store: AdapterStore) -> None:
        self.model, self.store = model, store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        store = self.store
        block = parallel_block(store.current_setup())
        base = getattr(store, "parallel_base_output", None)
        labels = getattr(store, "parallel_labels", None)
        choice_mask = getattr(store, "parallel_choice_mask", None)
        n_choices = getattr(store, "pending_num_choices", None)  # set by routing's choice flattening
        store.parallel_base_output = store.parallel_labels = store.parallel_choice_mask = None  # type: ignore[attr-defined]
        store.pending_num_choices = None  # type: ignore[attr-defined]
        _set_parallel_state(store.adapters, None)
        if block is None or base is None:
            return None
        result = parallel_output(
            self.model,
            store,
            block,
            base,
            output,
            labels,
            args,
            kwargs,
            choice_mask=choice_mask,
            num_choices=n_choices,
        )
        if _generating(store.adapters):
            return _generation_output(result, base, output)
        return result


def install_composition_hooks(model: nn.Module, store: AdapterStore) -> None:
    """Hooks that make ``Parallel`` work and add the fusion regulariser to the loss while training."""
    from adapterhub.architectures import get_base_model, get_layers, spec_for_model_type
    from adapterhub.fusion import RegulariserHook

    store.parallel_base_output = store.parallel_labels = store.parallel_choice_mask = None  # type: ignore[attr-defined]
    spec = spec_for_model_type(model.config.model_type)  # type: ignore[union-attr]
    for index, layer in enumerate(get_layers(model, spec)):
        # prepend: replicate before the injector records the residual stream entering the layer
        layer.register_forward_pre_hook(_ParallelLayerHook(store, index), with_kwargs=True, prepend=True)
    model.register_forward_pre_hook(_StashLabels(store), with_kwargs=True, prepend=True)
    get_base_model(model).register_forward_hook(_CaptureForParallel(store))
    model.register_forward_hook(_ParallelOutputHook(model, store), with_kwargs=True)
    model.register_forward_hook(RegulariserHook(model, store))


@dataclass
class ParallelOutput:
    """What a model returns under ``Parallel``: one entry per branch, in the block's order.

    ``logits``: ``(n_branches, batch, ...)`` when every branch has a head with outputs of the same shape, else
    None (use ``outputs``); ``loss``: the sum of the branch losses when ``labels`` were given (the same labels are
    used for every branch); ``outputs[i]``: branch ``i``'s output (``logits``, ``loss``, ``last_hidden_state``);
    ``last_hidden_state``: ``(n_branches, batch, seq, hidden)``. ``out["name"]`` is the branch of that name.
    """

    names: tuple[str, ...]
    outputs: tuple[Any, ...]
    loss: torch.Tensor | None
    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return self.outputs[key]
        if key in self.names:
            return self.outputs[self.names.index(key)]
        raise KeyError(f"No branch {key!r}; branches: {', '.join(self.names)}.")

    def __len__(self) -> int:
        return len(self.outputs)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.outputs)


def _generation_output(result: ParallelOutput, base: Any, output: Any) -> Any:
    """One causal-LM output whose logits are the branches' logits one after another: ``(n·B, T, vocab)``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    missing = [o.name for o in result.outputs if o.logits is None]
    if missing:
        raise ConfigError(
            f"generate() under Parallel needs logits from every branch; {missing} has no head. Add a causal_lm "
            "head named like the branch (model.add_causal_lm_head(name)) or use a model with a built-in LM head."
        )
    past = None if isinstance(output, tuple) else getattr(output, "past_key_values", None)
    if past is None and not isinstance(base, tuple):
        past = getattr(base, "past_key_values", None)
    logits = torch.cat([o.logits for o in result.outputs], dim=0)  # (n·B, T, vocab)
    return CausalLMOutputWithPast(logits=logits, past_key_values=past)


@dataclass
class BranchOutput:
    name: str
    logits: torch.Tensor | None
    loss: torch.Tensor | None
    last_hidden_state: torch.Tensor


def _static_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    return nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


def _branch_rows(value: Any, rows: slice, n: int) -> Any:
    """A branch's rows of an input that arrived replicated (generation); an input of B rows as it is."""
    if (
        isinstance(value, torch.Tensor)
        and rows.stop is not None
        and value.shape[0] == n * (rows.stop - rows.start)
    ):
        return value[rows]
    return value


def parallel_output(
    model: nn.Module,
    store: AdapterStore,
    block: Parallel,
    base: Any,
    output: Any,
    labels: torch.Tensor | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    choice_mask: torch.Tensor | None = None,
    num_choices: int | None = None,
) -> ParallelOutput:
    """Split the Parallel pass per branch. Multiple-choice inputs (batch, n_choices, seq) reach the layers
    flattened to (batch * n_choices, seq) rows (``num_choices``: the n_choices they had); each branch's head gets
    ``num_choices`` and ``choice_mask`` (batch, n_choices) so that padded choices are masked out of its logits and
    loss."""
    from adapterhub.heads.base import HeadInputs

    n = len(block.children)
    hidden = base[0] if isinstance(base, tuple) else base.last_hidden_state  # (n·B, T, d)
    pooled = getattr(base, "pooler_output", None)
    if hidden.shape[0] % n:
        raise ConfigError(f"Parallel output has {hidden.shape[0]} rows, not a multiple of {n} branches.")
    batch = hidden.shape[0] // n
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    n_choices = num_choices  # the inputs were flattened before this hook saw them (a bare base model)
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 3:  # (batch, n_choices, seq)
        n_choices = input_ids.shape[1]
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])  # (batch * n_choices, seq)
        if isinstance(mask, torch.Tensor) and mask.dim() == 3:
            mask = mask.reshape(-1, mask.shape[-1])
    static_logits = getattr(output, "logits", None) if not isinstance(output, tuple) else None
    outs = []
    for i, name in enumerate(branch_names(block)):
        rows = slice(i * batch, (i + 1) * batch)
        logits = loss = None
        if name in store.heads:
            pooled_i = pooled[rows] if pooled is not None else None
            head = store.heads[name]
            targets = labels if labels is None or not hasattr(head, "label_names") else {"labels": labels}
            embeddings = None
            if head.needs_embeddings:  # tied LM heads read the model's output embedding matrix
                from adapterhub.heads.lm import output_embedding_matrix

                embeddings = output_embedding_matrix(model)
            head_inputs = HeadInputs(
                hidden[rows], _branch_rows(mask, rows, n), _branch_rows(input_ids, rows, n), pooled_i,
                embeddings=embeddings,
                num_choices=n_choices if head.flattens_choices else None,
                choice_mask=choice_mask if "choice_mask" in head.input_names else None,
            )  # fmt: skip
            result = head(head_inputs, targets)
            logits, loss = result.logits, result.loss
        elif static_logits is not None and static_logits.shape[0] == n * batch:
            logits = static_logits[rows]
            loss = _static_loss(logits, labels) if labels is not None else None
        outs.append(BranchOutput(name, logits, loss, hidden[rows]))
    losses = [o.loss for o in outs if o.loss is not None]
    shapes = {tuple(o.logits.shape) if o.logits is not None else None for o in outs}
    stacked = torch.stack([o.logits for o in outs]) if len(shapes) == 1 and None not in shapes else None
    return ParallelOutput(
        names=tuple(branch_names(block)),
        outputs=tuple(outs),
        loss=torch.stack(losses).sum() if losses else None,
        logits=stacked,
        last_hidden_state=hidden.view(n, batch, *hidden.shape[1:]),
    )
