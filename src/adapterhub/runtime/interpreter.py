"""The one interpreter of composition blocks: the value of one attachment point under a setup.

Semantics (blocks in ``adapterhub.spec.composition``; ``inputs`` are the point's ``PointInputs``, and an adapter that
does not occupy the point is absent there):

- a name: that adapter alone (``forward_at``);
- ``Stack(a, b, ...)``: ``c_0 = inputs.start()``, each present adapter's ``stack_step`` maps ``c_{k-1}`` to
  ``c_k``, the last one's ``stack_leave`` gives the point's value. A ``Fuse`` is one step; a final ``Split``,
  ``BatchSplit``, ``Parallel`` or ``Average`` runs on ``inputs.on(c_{k-1})``;
- ``Fuse``: AdapterFusion (``adapterhub.runtime.fusion.fuse_step``);
- ``Split`` / ``BatchSplit`` / ``Parallel``: children on consecutive positions / rows / replicated row blocks, the
  parts joined again (a BatchSplit whose children the method can group runs as one computation);
- ``Average``: ``Σ_i w_i · y_i`` over the children's values.

Where a child has no adapter at the point, its part gets the point's base value. The interpreter never looks at a
method's class: it asks the adapter module (``adapterhub.methods.base.AdapterModule``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.errors import AdapterNotFoundError, ConfigError, did_you_mean
from adapterhub.methods.base import AdapterModule, Point, PointInputs
from adapterhub.runtime.fusion import fuse_step
from adapterhub.spec.composition import (
    Average,
    BatchSplit,
    Fuse,
    Parallel,
    Setup,
    Split,
    Stack,
    blocks_with_parents,
    flatten_stack,
    setup_names,
)

LAST_ONLY_IN_STACK = (Split, BatchSplit, Parallel, Average)


@dataclass
class PointRun:
    """One attachment point of one forward pass: where we are and what can run there.

    ``parallel_batch``: under ``Parallel``, the batch size before replication (None outside a Parallel pass);
    ``merged``: adapters folded into the base weights, absent everywhere (the weights apply them)."""

    layer: int
    point: Point
    adapters: Mapping[str, AdapterModule]
    fusions: Mapping[str, Any]
    parallel_batch: int | None = None
    merged: Collection[str] = ()

    def adapter(self, name: str) -> AdapterModule:
        if name not in self.adapters:
            raise AdapterNotFoundError(
                f"Adapter {name!r} is in the active setup but not on this model{did_you_mean(name, self.adapters)}."
            )
        return self.adapters[name]

    def present(self, name: str) -> bool:
        module = self.adapter(name)
        return name not in self.merged and module.present(self.layer, *self.point)


Runner = Callable[[PointRun, Any, PointInputs], "torch.Tensor | None"]


def run_setup(run: PointRun, setup: Setup | None, inputs: PointInputs) -> torch.Tensor | None:
    """The replacement value for the point's output under ``setup``, or None when no adapter sits there (``None``,
    a BatchSplit's rows with no adapter, never has one)."""
    if setup is None:
        return None
    if isinstance(setup, str):
        if not run.present(setup):
            return None
        return run.adapter(setup).forward_at(run.layer, run.point, inputs)
    runner = RUNNERS.get(type(setup))
    if runner is None:
        raise ConfigError(f"No interpreter for {type(setup).__name__} blocks.")
    return runner(run, setup, inputs)


def _run_or_base(run: PointRun, setup: Setup | None, inputs: PointInputs) -> tuple[torch.Tensor, bool]:
    out = run_setup(run, setup, inputs)
    return (inputs.base(), False) if out is None else (out, True)


def _run_stack(run: PointRun, block: Stack, inputs: PointInputs) -> torch.Tensor | None:
    running, last = inputs.start(), None
    for child in flatten_stack(block):
        if isinstance(child, LAST_ONLY_IN_STACK):
            out = run_setup(run, child, inputs.on(running))
            if out is not None or last is None:
                return out
            break
        if isinstance(child, Fuse):
            step = fuse_step(
                run.layer, run.point, _present_modules(run, child), run.fusions, child, inputs.on(running)
            )
            if step is not None:
                running, last = step
            continue
        assert isinstance(child, str)
        if run.present(child):
            last = run.adapter(child)
            running = last.stack_step(run.layer, run.point, running, inputs)
    if last is None:
        return None
    return last.stack_leave(run.layer, run.point, running, inputs)


def _present_modules(run: PointRun, block: Fuse) -> list[AdapterModule | None]:
    return [run.adapter(n) if run.present(n) else None for n in block.children]  # type: ignore[arg-type]


def _run_fuse(run: PointRun, block: Fuse, inputs: PointInputs) -> torch.Tensor | None:
    step = fuse_step(run.layer, run.point, _present_modules(run, block), run.fusions, block, inputs)
    if step is None:
        return None
    running, last = step
    return last.stack_leave(run.layer, run.point, running, inputs)


def _run_chunks(
    run: PointRun,
    children: Sequence[Setup | None],
    bounds: Sequence[tuple[int, int]],
    inputs: PointInputs,
    dim: int,
) -> torch.Tensor | None:
    """Run child ``i`` on ``[start_i, end_i)`` along ``dim`` (0 = rows, 1 = positions) and join the parts."""
    if not any(run.present(name) for child in children for name in setup_names(child)):
        return None  # none of the children sits here: leave the point alone
    parts, any_adapter = [], False
    for child, (start, end) in zip(children, bounds, strict=True):
        if end <= start:
            continue
        out, ran = _run_or_base(run, child, inputs.select(slice(start, end), dim))
        parts.append(out)
        any_adapter = any_adapter or ran
    if not any_adapter:
        return None
    return inputs.join(parts, dim)


def _run_split(run: PointRun, block: Split, inputs: PointInputs) -> torch.Tensor | None:
    length = inputs.length()
    edges = [0, *(min(i, length) for i in block.split_index), length]
    bounds = list(itertools.pairwise(edges))
    # several alike adapters on token slices (a packed row's segments; None slices keep the base): one computation
    named = [(c, b) for c, b in zip(block.children, bounds, strict=True) if c is not None and b[1] > b[0]]
    modules = _present_adapters(run, [c for c, _ in named]) if len(named) > 1 else None
    if modules is not None:
        grouped = modules[0].split_grouped(modules, run.layer, run.point, inputs, [b for _, b in named])
        if grouped is not None:
            return grouped
    return _run_chunks(run, block.children, bounds, inputs, dim=1)


def _present_adapters(run: PointRun, children: Sequence[Setup | None]) -> list[AdapterModule] | None:
    """The adapters of ``children`` when every child is a name whose adapter sits at the point, else None (one
    lookup per child: the hot path of a mixed generation step)."""
    adapters, merged, layer, (kind, point) = run.adapters, run.merged, run.layer, run.point
    out = []
    for child in children:
        if not isinstance(child, str):
            return None
        module = run.adapter(child) if child not in adapters else adapters[child]
        if child in merged or not module.present(layer, kind, point):
            return None
        out.append(module)
    return out


def _run_batch_split(run: PointRun, block: BatchSplit, inputs: PointInputs) -> torch.Tensor | None:
    rows = inputs.batch_size()
    if sum(block.batch_sizes) != rows:
        raise ConfigError(
            f"BatchSplit batch_sizes {list(block.batch_sizes)} sum to {sum(block.batch_sizes)}, but the batch has "
            f"{rows} rows; give one size per adapter that adds up to the batch size."
        )
    # children with no rows take no part (so that their parameters get no gradient, not even a zero one)
    used = [(child, size) for child, size in zip(block.children, block.batch_sizes, strict=True) if size > 0]
    named = list(itertools.takewhile(lambda pair: pair[0] is not None, used))
    trailing_base = sum(size for child, size in used[len(named) :] if child is None)
    modules = (
        _present_adapters(run, [child for child, _ in named])
        if named and all(child is None for child, _ in used[len(named) :])
        else None
    )
    if modules is not None:  # alike adapters, then (optionally) rows with no adapter: one grouped computation
        adapter_rows = rows - trailing_base
        part = inputs.select(slice(0, adapter_rows), 0) if trailing_base else inputs
        grouped = modules[0].batch_split_grouped(
            modules, run.layer, run.point, part, [size for _, size in named]
        )
        if grouped is not None:
            if not trailing_base:
                return grouped
            return inputs.join([grouped, inputs.select(slice(adapter_rows, rows), 0).base()], 0)
    edges = [0]
    for size in block.batch_sizes:
        edges.append(edges[-1] + size)
    return _run_chunks(run, block.children, list(itertools.pairwise(edges)), inputs, dim=0)


def _run_average(run: PointRun, block: Average, inputs: PointInputs) -> torch.Tensor | None:
    if not any(run.present(name) for name in block.names()):
        return None
    total, any_adapter = None, False
    for child, weight in zip(block.children, block.effective_weights(), strict=True):
        out, ran = _run_or_base(run, child, inputs)
        any_adapter = any_adapter or ran
        total = out * weight if total is None else total + out * weight
    return total if any_adapter else None


def _run_parallel(run: PointRun, block: Parallel, inputs: PointInputs) -> torch.Tensor | None:
    """Rows ``[i·B, (i+1)·B)`` of the replicated batch belong to branch ``i``."""
    n, rows, batch = len(block.children), inputs.batch_size(), run.parallel_batch
    if batch is None or rows != n * batch:
        if not any(run.present(name) for name in block.names()):
            return None
        raise ConfigError(
            f"Parallel with {n} branches expected a replicated batch of {n} x B rows at layer {run.layer}, got "
            f"{rows}. Run the whole model (not a sub-module) so that adapterhub can replicate the batch."
        )
    bounds = [(i * batch, (i + 1) * batch) for i in range(n)]
    return _run_chunks(run, block.children, bounds, inputs, dim=0)


RUNNERS: dict[type, Runner] = {
    Stack: _run_stack,
    Fuse: _run_fuse,
    Split: _run_split,
    BatchSplit: _run_batch_split,
    Average: _run_average,
    Parallel: _run_parallel,
}


def check_setup(setup: Setup | None, adapters: Mapping[str, AdapterModule]) -> None:
    """Raise a ConfigError naming the block and the method when an adapter sits in a block its method does not
    support (``AdapterModule.composable``), e.g. a LoRA adapter inside ``Fuse``."""
    for block, child in blocks_with_parents(setup):
        if not isinstance(child, str) or child not in adapters:
            continue
        module = adapters[child]
        kind = type(block).__name__
        others = [adapters[n] for n in setup_names(block) if n != child and n in adapters]
        reason = module.refuse_in(kind, others)
        if reason is not None:
            raise ConfigError(f"{kind} cannot hold {child!r}: {reason}")
        if kind not in module.composable:
            raise ConfigError(
                f"{kind} cannot hold {child!r}: {module.method} adapters compose with "
                f"{', '.join(sorted(module.composable)) or 'no block'} (see the support table in docs/methods.md)."
            )
