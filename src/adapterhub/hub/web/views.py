"""Pure helpers of the website: the copy-paste snippet, the fusion heatmap, number formatting.

Nothing here touches HTTP; the functions take plain values (or ORM rows) and return plain values, so they are
tested without a server.

Fusion activations
------------------
The hub's card has no dedicated field for AdapterFusion activations, and its ``metrics`` are a flat
``{name: float}`` map. A fusion setup therefore stores the mean attention weight that row ``R`` (a layer, or
``layer:site`` when a fusion has several sites per layer) gives to adapter ``A`` as the metric ``fusion/R/A``
(``A`` may itself contain ``/`` or ``@``, e.g. ``fusion/3/sentiment/sst-2@ukp``); :func:`fusion_card_metrics`
turns :meth:`adapterhub.runtime.fusion.FusionActivations.to_dict` into these metrics. A dict in that ``to_dict`` form
(``{"adapters": [...], "rows": [...], "weights": [[...], ...]}``) stored as ``fusion_activations`` in the
adapter's config is read as well. Either one makes the adapter page draw the heatmap.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FUSION_PREFIX = "fusion/"
DEFAULT_HUB_URL = "http://127.0.0.1:8765"
_PY_STRING_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/@:+ ]")


# ------------------------------------------------------------------------------------------- formatting


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def human_count(n: int | None) -> str:
    if n is None:
        return "0"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    return f"{n:,}"


def format_metric(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(float(value)):
        return str(value)
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4g}"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def method_parameters(config: Any) -> list[tuple[str, str]]:
    """The method's own options from an adapter config (``r``, ``alpha``, ``targets`` for LoRA, ``prefix_length``
    for prefix tuning, ...) as (name, text) pairs for the facts list; lists joined with commas."""
    if not isinstance(config, Mapping):
        return []
    out = []
    for key, value in sorted(config.items()):
        if key == "method" or value is None:
            continue
        if isinstance(value, (list, tuple)):
            text = ", ".join(str(v) for v in value) or "none"
        elif isinstance(value, Mapping):
            text = json.dumps(value, sort_keys=True)
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        out.append((key, text[:200]))
    return out[:40]


def plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metrics meant for a table: everything but the fusion activations."""
    return {k: v for k, v in (metrics or {}).items() if not k.startswith(FUSION_PREFIX)}


# ----------------------------------------------------------------------------------------------- snippet


def python_string(text: str) -> str:
    """``text`` as a Python string literal (double quotes), safe for any input."""
    return json.dumps(text, ensure_ascii=False)


def load_snippet(
    identifier: str, model_name: str, hub_url: str | None = None, *, has_head: bool = False
) -> str:
    """The code a user pastes to load the adapter into their model."""
    model = model_name.strip() or "bert-base-uncased"
    lines = [
        "import adapterhub",
        "from transformers import AutoModel",
        "",
        f"model = AutoModel.from_pretrained({python_string(model)})",
        "adapterhub.init(model)",
    ]
    args = [python_string(identifier), "set_active=True"]
    if hub_url and hub_url.rstrip("/") != DEFAULT_HUB_URL:
        args.append(f"hub_url={python_string(hub_url.rstrip('/'))}")
    lines.append(f"name = model.load_adapter({', '.join(args)})")
    if has_head:
        lines.append("# the adapter's prediction head is loaded too (pass with_head=False to skip it)")
    return "\n".join(lines)


def cli_snippet(identifier: str, hub_url: str | None = None) -> str:
    prefix = ""
    if hub_url and hub_url.rstrip("/") != DEFAULT_HUB_URL:
        prefix = f"ADAPTERHUB_HUB_URL={hub_url.rstrip('/')} "
    quoted = identifier if not _PY_STRING_UNSAFE.search(identifier) else "'" + identifier + "'"
    return f"{prefix}adapterhub info {quoted}"


# ------------------------------------------------------------------------------------------------ heatmap


@dataclass(frozen=True)
class HeatCell:
    row: int
    col: int
    layer: str
    adapter: str
    value: float
    fill: str
    text_fill: str


@dataclass(frozen=True)
class Heatmap:
    layers: list[str]
    adapters: list[str]
    weights: list[list[float | None]]  # rows = layers, columns = adapters
    vmin: float
    vmax: float

    @property
    def cells(self) -> list[HeatCell]:
        out = []
        for i, layer in enumerate(self.layers):
            for j, adapter in enumerate(self.adapters):
                value = self.weights[i][j]
                if value is None:
                    continue
                t = 0.0 if self.vmax <= self.vmin else (value - self.vmin) / (self.vmax - self.vmin)
                out.append(HeatCell(i, j, layer, adapter, value, colour(t), "#fff" if t > 0.55 else "#111"))
        return out

    def svg_geometry(self) -> dict[str, int]:
        """Sizes for the SVG: label column width, cell size, total width and height (viewBox units)."""
        label_w = 64
        cell_w = 84 if len(self.adapters) <= 6 else 52
        cell_h = 28
        longest = max((len(a) for a in self.adapters), default=0)
        header_h = 24 + round(min(longest, 24) * 6.5 * 0.58)  # labels are rotated by 35 degrees
        tail = round(min(longest, 24) * 6.5 * 0.82)  # the last label leans right past the grid
        return {
            "label_w": label_w,
            "cell_w": cell_w,
            "cell_h": cell_h,
            "header_h": header_h,
            "width": label_w + cell_w * len(self.adapters) + max(8, tail - cell_w // 2),
            "height": header_h + cell_h * len(self.layers) + 34,
        }


# a sequential light-to-dark blue ramp (ColorBrewer "Blues" end points and midpoint)
_RAMP = [(247, 251, 255), (107, 174, 214), (8, 48, 107)]


def colour(t: float) -> str:
    t = min(1.0, max(0.0, t))
    if t <= 0.5:
        a, b, u = _RAMP[0], _RAMP[1], t / 0.5
    else:
        a, b, u = _RAMP[1], _RAMP[2], (t - 0.5) / 0.5
    r, g, bl = (round(x + (y - x) * u) for x, y in zip(a, b))
    return f"#{r:02x}{g:02x}{bl:02x}"


def _layer_key(layer: str) -> tuple[int, int, str]:
    head, _, site = layer.partition("/")
    return (0, int(head), site) if head.isdigit() else (1, 0, layer)


def fusion_card_metrics(activations: Mapping[str, Any]) -> dict[str, float]:
    """``FusionActivations.to_dict()`` -> card metrics ``fusion/ROW/ADAPTER`` (a row's ``/`` becomes ``:``)."""
    out: dict[str, float] = {}
    rows = activations.get("rows") or activations.get("layers") or []
    for row, weights in zip(rows, activations.get("weights") or []):
        for adapter, value in zip(activations.get("adapters") or [], weights):
            out[f"{FUSION_PREFIX}{str(row).replace('/', ':')}/{adapter}"] = float(value)
    return out


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def heatmap_from_metrics(metrics: Mapping[str, Any] | None) -> Heatmap | None:
    """``fusion/LAYER/ADAPTER`` metrics -> a heatmap, or None when there are none."""
    grid: dict[str, dict[str, float]] = {}
    adapters: list[str] = []
    for key, raw in (metrics or {}).items():
        if not isinstance(key, str) or not key.startswith(FUSION_PREFIX):
            continue
        layer, sep, adapter = key[len(FUSION_PREFIX) :].partition("/")
        value = _finite(raw)
        if not sep or not layer or not adapter or value is None:
            continue
        layer = layer.replace(":", "/")
        grid.setdefault(layer, {})[adapter] = value
        if adapter not in adapters:
            adapters.append(adapter)
    if not grid:
        return None
    layers = sorted(grid, key=_layer_key)
    weights = [[grid[layer].get(a) for a in adapters] for layer in layers]
    return _heatmap(layers, adapters, weights)


def heatmap_from_dict(data: Any) -> Heatmap | None:
    """``{"adapters": [...], "layers": [...], "weights": [[...], ...]}`` -> a heatmap (None if malformed)."""
    if not isinstance(data, Mapping):
        return None
    adapters, weights = data.get("adapters"), data.get("weights")
    if not isinstance(adapters, list) or not isinstance(weights, list) or not adapters or not weights:
        return None
    layers = data.get("rows", data.get("layers"))
    if not isinstance(layers, list) or len(layers) != len(weights):
        layers = list(range(len(weights)))
    rows: list[list[float | None]] = []
    for row in weights:
        if not isinstance(row, list) or len(row) != len(adapters):
            return None
        rows.append([_finite(v) for v in row])
    return _heatmap([str(x) for x in layers], [str(a) for a in adapters], rows)


def _heatmap(layers: list[str], adapters: list[str], weights: list[list[float | None]]) -> Heatmap | None:
    values = [v for row in weights for v in row if v is not None]
    if not values:
        return None
    lo, hi = min(values), max(values)
    vmin = min(0.0, lo)  # weights are shares of attention: the scale starts at zero
    vmax = hi if hi > vmin else vmin + 1.0
    return Heatmap(layers[:100], adapters[:32], [r[:32] for r in weights[:100]], vmin, vmax)


def fusion_heatmap(metrics: Mapping[str, Any] | None, config: Any = None) -> Heatmap | None:
    """The heatmap of an adapter version: from its metrics, else from ``config["fusion_activations"]``."""
    found = heatmap_from_metrics(metrics)
    if found is None and isinstance(config, Mapping):
        found = heatmap_from_dict(config.get("fusion_activations"))
    return found


def is_fusion(method: str | None, metrics: Mapping[str, Any] | None, config: Any = None) -> bool:
    if method == "fusion":
        return True
    if any(isinstance(k, str) and k.startswith(FUSION_PREFIX) for k in (metrics or {})):
        return True
    return isinstance(config, Mapping) and isinstance(config.get("fusion_activations"), Mapping)
