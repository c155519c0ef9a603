"""``model.adapter_summary()``: what is on the model, how big it is, and what trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapterhub.heads.api import HeadsMixin
from adapterhub.heads.static import static_head_parameters
from adapterhub.spec.composition import setup_names


@dataclass(frozen=True)
class SummaryRow:
    name: str
    kind: str  # "adapter" or "head"
    method: str
    parameters: int
    percent_of_base: float
    active: bool
    trainable: bool


@dataclass(frozen=True)
class AdapterSummary:
    rows: tuple[SummaryRow, ...]
    base_parameters: int
    base_trainable: bool

    def __getitem__(self, name: str) -> SummaryRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [row.__dict__.copy() for row in self.rows]

    def __str__(self) -> str:
        header = ("name", "kind", "method", "params", "% of base", "active", "trainable")
        lines = [
            (
                r.name,
                r.kind,
                r.method,
                f"{r.parameters:,}",
                f"{r.percent_of_base:.3f}%",
                _yes(r.active),
                _yes(r.trainable),
            )
            for r in self.rows
        ]
        lines.append(
            ("(base model)", "", "", f"{self.base_parameters:,}", "100.000%", "", _yes(self.base_trainable))
        )
        widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
        rule = "  ".join("-" * w for w in widths)
        fmt = [header, *lines]
        out = [
            "  ".join(
                str(cell).ljust(w) if i < 3 else str(cell).rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            )
            for row in fmt
        ]
        return "\n".join([out[0], rule, *out[1:-1], rule, out[-1]])

    __repr__ = __str__


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _describe(config: Any) -> str:
    method = getattr(config, "method", "?")
    where = getattr(config, "sites", None) or getattr(config, "targets", None)
    return f"{method} ({'+'.join(where)})" if where else method


def summarize(model: HeadsMixin) -> AdapterSummary:
    """Rows for every adapter, flexible head and the model's built-in head; percentages are of the base model
    (the transformer body without any head)."""
    store = model._store
    static = static_head_parameters(model._module())
    static_ids = {id(p) for p in static.values()}
    base_params = [
        p
        for n, p in model._module().named_parameters()
        if not n.startswith("_adapterhub.") and id(p) not in static_ids
    ]
    base_count = sum(p.numel() for p in base_params)
    active = set(setup_names(store.current_setup()))
    active_head = model.active_head
    rows = []
    for name, module in store.adapters.items():
        count = sum(p.numel() for p in module.parameters())
        rows.append(
            SummaryRow(
                name=name,
                kind="adapter",
                method=_describe(module.config),
                parameters=count,
                percent_of_base=100.0 * count / base_count if base_count else 0.0,
                active=name in active,
                trainable=any(p.requires_grad for p in module.parameters()),
            )
        )
    for name, head in store.heads.items():
        count = sum(p.numel() for p in head.parameters())
        rows.append(
            SummaryRow(
                name=name,
                kind="head",
                method=str(head.head_type),
                parameters=count,
                percent_of_base=100.0 * count / base_count if base_count else 0.0,
                active=name == active_head,
                trainable=any(p.requires_grad for p in head.parameters()),
            )
        )
    if static:
        count = sum(p.numel() for p in static.values())
        rows.append(
            SummaryRow(
                name="(built-in head)",
                kind="head",
                method="static: " + ", ".join(sorted({n.rsplit(".", 1)[0] for n in static})),
                parameters=count,
                percent_of_base=100.0 * count / base_count if base_count else 0.0,
                active=active_head is None,
                trainable=any(p.requires_grad for p in static.values()),
            )
        )
    return AdapterSummary(tuple(rows), base_count, any(p.requires_grad for p in base_params))
