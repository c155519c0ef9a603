"""The small Ray actor the ``serve-model --ray`` deployments share (``adapterhub-metrics``, namespace
``adapterhub``; detached, created by whichever deployment asks first):

- every replica pushes its Prometheus text every ``METRICS_PUSH_S`` (``put``); the gateway reads the texts of the
  replicas heard from within ``METRICS_STALE_S`` (``get``) and merges them for ``/metrics``;
- the gateway records each run-time load (its source) or unload (None) that every live replica applied
  (``record``); a replica that starts later (Ray replacing one) applies them (``changes``) before it serves.
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
    adapters loaded or unloaded at run time, which a replica that starts later (Ray replacing one) applies too."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[float, str]] = {}
        self.runtime: dict[str, str | None] = {}  # adapters loaded (source) / unloaded (None) at run time

    def record(self, name: str, source: str | None) -> None:
        """A run-time load (``source``) or unload (None) that every live replica applied."""
        self.runtime[name] = source

    def changes(self) -> dict[str, str | None]:
        """The run-time loads and unloads so far, for a replica that starts later to apply."""
        return dict(self.runtime)

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
