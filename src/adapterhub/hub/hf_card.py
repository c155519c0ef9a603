"""The model card (``README.md``) of an adapter repo: YAML metadata between ``---`` lines, then Markdown.

Shared by the client (``push_adapter_to_hf`` writes it) and the server's Hub file API (a commit is published with the
card this metadata gives). The keys the hub reads (docs/hub.md, "Hugging Face Hub file API of our hub"):

* ``adapterhub:`` a mapping with the publish card: ``adapter_type`` (task|language), ``task``, ``subtask``,
  ``language``, ``license``, ``description``, ``citation``, ``metrics`` (name -> number), ``config_name``,
  ``model_type``, ``model_name``, ``hidden_size``. Any other key under ``adapterhub:`` is refused, naming these.
* ``license`` (top level, the Hub's own key): the license when ``adapterhub.license`` is absent.
* ``model-index`` (the Hub's own key): ``results[].metrics[]`` ``{type, value}`` give the metrics when
  ``adapterhub.metrics`` is absent.

Everything else in the metadata (``library_name``, ``base_model``, ``tags``, ``datasets``, ...) is kept in the
README and shown by the Hub, but does not change what is published.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from adapterhub.errors import AdapterHubError

ADAPTERHUB_KEY = "adapterhub"
CARD_KEYS = (
    "adapter_type",
    "task",
    "subtask",
    "language",
    "license",
    "description",
    "citation",
    "metrics",
    "config_name",
    "model_type",
    "model_name",
    "hidden_size",
)
LIBRARY_NAMES = {"adapterhub": "adapterhub", "adapters": "adapter-transformers", "peft": "peft"}
_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\r?\n(.*?)(?:\r?\n)?---[ \t]*(?:\r?\n|\Z)", re.S)


class ModelCardError(AdapterHubError, ValueError):
    """The README's metadata is not valid YAML, or its ``adapterhub`` keys are not a valid card."""


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """``(metadata, body)`` of a README; a README without a ``---`` block has empty metadata."""
    import yaml

    match = _FRONT_MATTER.match(text)
    if match is None:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1)) if match.group(1).strip() else {}
    except yaml.YAMLError as error:
        raise ModelCardError(f"The README's metadata is not valid YAML: {error}") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ModelCardError("The README's metadata must be a YAML mapping (key: value lines).")
    return meta, text[match.end() :]


def render_card(metadata: Mapping[str, Any], body: str) -> str:
    """A README with ``metadata`` as its YAML block, then ``body``."""
    import yaml

    block = yaml.safe_dump(dict(metadata), sort_keys=False, allow_unicode=True).strip()
    return f"---\n{block}\n---\n\n{body.lstrip()}"


def _model_index_metrics(meta: Mapping[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    index = meta.get("model-index")
    if not isinstance(index, list):
        return metrics
    for entry in index:
        results = entry.get("results") if isinstance(entry, dict) else None
        for result in results if isinstance(results, list) else []:
            found = result.get("metrics") if isinstance(result, dict) else None
            for metric in found if isinstance(found, list) else []:
                if isinstance(metric, dict) and isinstance(metric.get("type"), str) and "value" in metric:
                    metrics[metric["type"]] = metric["value"]
    return metrics


def card_from_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The publish card (the ``card`` JSON of ``POST /api/v1/adapters/{owner}/{name}/versions``) that the README
    metadata gives; its values are checked by the publish itself, exactly as for any upload."""
    ours = meta.get(ADAPTERHUB_KEY)
    if ours is None:
        raise ModelCardError(
            f"The README's metadata has no '{ADAPTERHUB_KEY}:' mapping; the hub publishes an adapter with the "
            f"card it gives, e.g. '{ADAPTERHUB_KEY}: {{task: sentiment, subtask: sst-2}}' (keys: "
            f"{', '.join(CARD_KEYS)})."
        )
    if not isinstance(ours, dict):
        raise ModelCardError(f"'{ADAPTERHUB_KEY}:' in the README's metadata must be a mapping.")
    unknown = sorted(str(k) for k in ours if k not in CARD_KEYS)
    if unknown:
        raise ModelCardError(
            f"Unknown key(s) under '{ADAPTERHUB_KEY}:' in the README's metadata: {', '.join(unknown)}; "
            f"valid keys: {', '.join(CARD_KEYS)}."
        )
    card = dict(ours)
    if "license" not in card and isinstance(meta.get("license"), str):
        card["license"] = meta["license"]
    if "metrics" not in card:
        found = _model_index_metrics(meta)
        if found:
            card["metrics"] = found
    return card


def adapter_card(
    *,
    name: str,
    layout: str,
    method: str,
    base_model: str,
    task: str | None = None,
    subtask: str | None = None,
    language: str | None = None,
    adapter_type: str = "task",
    dataset: str | None = None,
    metrics: Mapping[str, float] | None = None,
    license: str = "",
    model_type: str | None = None,
    description: str = "",
    tags: Sequence[str] = (),
    repo_id: str = "",
) -> str:
    """The README.md ``push_adapter_to_hf`` uploads: the Hub's keys (``library_name``, ``base_model``, ``tags``
    with the method, task and data set, ``datasets``, ``license``, ``model-index`` with the metrics) and the
    ``adapterhub:`` card, so that the same repo also publishes on our hub's Hub file API."""
    if layout not in LIBRARY_NAMES:
        raise ModelCardError(f"Unknown layout {layout!r}; use one of {', '.join(LIBRARY_NAMES)}.")
    dataset = dataset or subtask
    all_tags = ["adapterhub", method.replace("_", "-")]
    all_tags += [t for t in (layout if layout != "adapterhub" else None, task, dataset, *tags) if t]
    meta: dict[str, Any] = {"library_name": LIBRARY_NAMES[layout]}
    if base_model:
        meta["base_model"] = base_model
    meta["tags"] = list(dict.fromkeys(all_tags))
    if dataset:
        meta["datasets"] = [dataset]
    if license:
        meta["license"] = license
    if language:
        meta["language"] = [language]
    if metrics and task:
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": task},
                        "dataset": {"name": dataset or task, "type": dataset or task},
                        "metrics": [{"type": k, "value": float(v)} for k, v in metrics.items()],
                    }
                ],
            }
        ]
    ours: dict[str, Any] = {"adapter_type": adapter_type}
    for key, value in (
        ("task", task),
        ("subtask", subtask),
        ("language", language),
        ("model_type", model_type),
    ):
        if value:
            ours[key] = value
    if metrics:
        ours["metrics"] = {k: float(v) for k, v in metrics.items()}
    if license:
        ours["license"] = license
    if description:
        ours["description"] = description
    meta[ADAPTERHUB_KEY] = ours
    what = f"{method} adapter for `{base_model}`" if base_model else f"{method} adapter"
    body = f"# {name}\n\nA {what}"
    body += f", trained for {task}/{subtask}.\n" if task and subtask else ".\n"
    if description:
        body += f"\n{description}\n"
    if repo_id:
        loader = {
            "adapterhub": f'model.load_adapter("{repo_id}", source="hf")  # adapterhub',
            "adapters": f'model.load_adapter("{repo_id}", source="hf")  # adapters or adapterhub',
            "peft": f'PeftModel.from_pretrained(base_model, "{repo_id}")  # or adapterhub load_adapter',
        }[layout]
        body += f"\n```python\n{loader}\n```\n"
    return render_card(meta, body)
