"""Houlsby et al. (2019), Figure 6: how much each span of layers' adapters matters.

For a trained adapter, the adapters of every contiguous span of layers ``[i..j]`` are removed (those layers run
as the plain base model) and the dev set is re-evaluated, without retraining. ``matrix[i][j]`` (``j >= i``) is
the metric with layers ``i..j`` ablated; the lower triangle is ``None``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from adapterhub.errors import ConfigError


@dataclass
class Ablation:
    metric: str
    baseline: float
    """The metric with every adapter layer in place."""
    no_adapter: float
    """The metric with the adapter switched off entirely (head only on the frozen base)."""
    num_layers: int
    matrix: list[list[float | None]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "baseline": self.baseline,
            "no_adapter": self.no_adapter,
            "num_layers": self.num_layers,
            "matrix": self.matrix,
            "layout": "matrix[first][last]: metric with the adapters of layers first..last removed (first <= last)",
        }


@contextlib.contextmanager
def without_layers(adapter: nn.Module, layers: range) -> Iterator[None]:
    """Temporarily remove the per-layer modules of ``adapter`` (a method keeping them in ``adapter.layers``, a
    ModuleDict keyed by layer index) for ``layers``; they are put back on exit."""
    store = getattr(adapter, "layers", None)
    if not isinstance(store, nn.ModuleDict):
        raise ConfigError(
            f"ablation needs an adapter with per-layer modules (bottleneck adapters); "
            f"{type(adapter).__name__} has none."
        )
    removed = {str(i): store[str(i)] for i in layers if str(i) in store}
    for key in removed:
        del store[key]
    try:
        yield
    finally:
        for key, module in removed.items():
            store[key] = module


def ablate(model: nn.Module, adapter_name: str, evaluate: Any, metric: str) -> Ablation:
    """Evaluate ``model`` with the adapters of every span of layers removed. ``evaluate()`` returns a metrics dict
    for the model as it currently is."""
    adapter = model._adapterhub.adapters[adapter_name]  # type: ignore[attr-defined, index]
    num_layers = model.model_dims().num_layers  # type: ignore[operator]
    baseline = evaluate()[metric]
    with without_layers(adapter, range(num_layers)):
        no_adapter = evaluate()[metric]
    matrix: list[list[float | None]] = [[None] * num_layers for _ in range(num_layers)]
    for first in range(num_layers):
        for last in range(first, num_layers):
            with without_layers(adapter, range(first, last + 1)):
                matrix[first][last] = evaluate()[metric]
    return Ablation(metric, baseline, no_adapter, num_layers, matrix)


def plot_heatmap(result: Ablation, path: Path, title: str = "") -> Path:
    """A heatmap PNG of ``result.matrix``: x = first ablated layer, y = last ablated layer, with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = result.num_layers
    grid = np.full((n, n), np.nan)
    for first in range(n):
        for last in range(first, n):
            value = result.matrix[first][last]
            grid[last, first] = (
                np.nan if value is None else 100.0 * value if result.metric != "mse" else value
            )
    scale = 1.0 if result.metric == "mse" else 100.0
    unit = "" if result.metric == "mse" else " (%)"
    figure, axes = plt.subplots(figsize=(1.0 + 0.75 * n + 1.5, 0.75 * n + 1.6), dpi=120)
    image = axes.imshow(
        np.ma.masked_invalid(grid), origin="lower", cmap="viridis_r" if result.metric == "mse" else "viridis"
    )
    for first in range(n):
        for last in range(first, n):
            value = grid[last, first]
            if not np.isnan(value):
                axes.text(
                    first,
                    last,
                    f"{value:.1f}" if scale == 100.0 else f"{value:.3f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value < np.nanmean(grid) else "black",
                )
    axes.set_xticks(range(n))
    axes.set_yticks(range(n))
    axes.set_xlabel("first layer with adapters removed")
    axes.set_ylabel("last layer with adapters removed")
    colorbar = figure.colorbar(image, ax=axes)
    colorbar.set_label(f"dev {result.metric}{unit}")
    baseline = result.baseline * scale
    digits = 1 if scale == 100.0 else 3
    headline = f"all adapters: {baseline:.{digits}f}, none: {result.no_adapter * scale:.{digits}f}"
    axes.set_title((title + "\n" if title else "") + headline, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
