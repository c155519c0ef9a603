"""Prometheus metrics of the server, in the text exposition format (version 0.0.4), written by hand.

Exposed at ``GET /metrics``:

- ``adapterhub_requests_total{endpoint, status}``: finished HTTP requests by endpoint and status code;
- ``adapterhub_request_seconds{endpoint}``: latency histogram of successful requests (arrival to response);
- ``adapterhub_queue_seconds``: time a request waited in the scheduler's queue before its pass started;
- ``adapterhub_batch_rows`` / ``adapterhub_batch_requests``: rows and requests per forward pass (histograms);
- ``adapterhub_pass_seconds``: duration of a forward pass (histogram);
- ``adapterhub_queue_rows``: rows waiting now; ``adapterhub_adapters_loaded``: adapters in memory now;
- ``adapterhub_adapter_loads_total``, ``adapterhub_adapter_evictions_total``, ``adapterhub_adapter_load_errors_total``.

Only the event loop thread updates metrics, so no locks are needed.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    """Cumulative buckets, sum and count of observed values."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.total:.6g}", f"{name}_count{suffix} {self.count}"]
        return out


class Metrics:
    """The server's counters, gauges and histograms (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency: dict[str, Histogram] = {}
        self.queue = Histogram(LATENCY_BUCKETS)
        self.pass_seconds = Histogram(LATENCY_BUCKETS)
        self.batch_rows = Histogram(ROW_BUCKETS)
        self.batch_requests = Histogram(ROW_BUCKETS)
        self.adapter_events: Counter[str] = Counter()
        self.queue_rows = 0
        self.adapters_loaded = 0

    def request(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        self.requests[(endpoint, status)] += 1
        if seconds is not None and status < 400:
            self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, rows: int, requests: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.pass_seconds.observe(seconds)

    def adapter_event(self, kind: str, loaded_now: int) -> None:
        self.adapter_events[kind] += 1
        self.adapters_loaded = loaded_now

    def render(self) -> str:
        """The exposition text."""
        lines = [
            "# HELP adapterhub_requests_total Finished requests by endpoint and status code.",
            "# TYPE adapterhub_requests_total counter",
        ]
        for (endpoint, status), count in sorted(self.requests.items()):
            lines.append(f'adapterhub_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
        lines += [
            "# HELP adapterhub_request_seconds Latency of successful requests.",
            "# TYPE adapterhub_request_seconds histogram",
        ]
        for endpoint, histogram in sorted(self.latency.items()):
            lines += histogram.lines("adapterhub_request_seconds", f'endpoint="{endpoint}"')
        for name, help_text, histogram in (
            ("adapterhub_queue_seconds", "Time requests waited before their forward pass.", self.queue),
            ("adapterhub_pass_seconds", "Duration of forward passes.", self.pass_seconds),
            ("adapterhub_batch_rows", "Rows per forward pass.", self.batch_rows),
            ("adapterhub_batch_requests", "Requests per forward pass.", self.batch_requests),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *histogram.lines(name)]
        for name, help_text, value in (
            ("adapterhub_queue_rows", "Rows waiting in the queue.", self.queue_rows),
            ("adapterhub_adapters_loaded", "Adapters in memory.", self.adapters_loaded),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        for kind, name in (
            ("load", "adapterhub_adapter_loads_total"),
            ("evict", "adapterhub_adapter_evictions_total"),
            ("load_error", "adapterhub_adapter_load_errors_total"),
        ):
            lines += [
                f"# HELP {name} Adapter {kind.replace('_', ' ')}s.",
                f"# TYPE {name} counter",
                f"{name} {self.adapter_events[kind]}",
            ]
        return "\n".join(lines) + "\n"
