"""The small Ray actor the ``serve-model --ray`` deployments share (``adapterhub-metrics``, namespace
``adapterhub``; detached, created by whichever deployment asks first):

- every replica pushes its Prometheus text every ``METRICS_PUSH_S`` (``put``); the gateway reads the texts of the
  replicas heard from within ``METRICS_STALE_S`` (``get``) and merges them for ``/metrics``;
- the gateway records each run-time change that every live replica applied (``record``: an adapter's new
  source, a composition's new setup, or None for removed); a replica that starts later (Ray replacing one)
  applies them in order (``changes``) before it serves.
"""

import time
from typing import Any

import ray

APP_NAME = "adapterhub"
METRICS_BOARD = f"{APP_NAME}-metrics"
METRICS_PUSH_S = 1.0  # each replica pushes its metrics text this often
METRICS_STALE_S = 10.0  # a replica silent this long (gone) leaves /metrics


@ray.remote(num_cpus=0)
class MetricsBoard:
    """The latest Prometheus text of each replica (pushed every ``METRICS_PUSH_S``), read by the gateway; and the
    run-time changes of adapters and compositions, which a replica that starts later (Ray replacing one) applies
    too."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[float, str]] = {}
        # (kind, name, state) of each run-time change, in order: a composition needs its adapters served first
        self.runtime: list[tuple[str, str, str | None]] = []

    def record(self, kind: str, name: str, state: str | None) -> None:
        """A run-time change every live replica applied: ``kind`` "adapter" (``state``: its source) or
        "composition" (its setup); ``state`` None: removed."""
        self.runtime.append((kind, name, state))

    def changes(self) -> list[tuple[str, str, str | None]]:
        """The run-time changes so far, in order, for a replica that starts later to apply."""
        return list(self.runtime)

    def put(self, replica: str, text: str) -> None:
        self.texts[replica] = (time.time(), text)

    def get(self) -> dict[str, str]:
        """Texts of the replicas heard from within ``METRICS_STALE_S``."""
        now = time.time()
        return {r: text for r, (at, text) in self.texts.items() if now - at <= METRICS_STALE_S}


def metrics_board() -> Any:
    """The application's one ``MetricsBoard`` (created by whichever deployment asks first)."""
    return MetricsBoard.options(  # type: ignore[attr-defined]
        name=METRICS_BOARD, namespace=APP_NAME, get_if_exists=True, lifetime="detached"
    ).remote()
