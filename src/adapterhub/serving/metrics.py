"""Prometheus metrics of the server, in the text exposition format (version 0.0.4), written by hand.

Exposed at ``GET /metrics``:

- ``adapterhub_requests_total{endpoint, status}``: finished HTTP requests by endpoint and status code;
- ``adapterhub_request_seconds{endpoint}``: latency histogram of successful requests (arrival to response);
- ``adapterhub_queue_seconds``: time a request waited in the scheduler's queue before its pass started;
- ``adapterhub_batch_rows`` / ``adapterhub_batch_requests``: rows and requests per forward pass (histograms);
- ``adapterhub_pass_seconds``: duration of a forward pass (histogram);
- ``adapterhub_queue_rows``: rows waiting now; ``adapterhub_adapters_loaded``: adapters in memory now;
- ``adapterhub_adapter_loads_total``, ``adapterhub_adapter_evictions_total``, ``adapterhub_adapter_load_errors_total``;
- ``adapterhub_adapter_cache_hits_total{adapter}`` / ``adapterhub_adapter_cache_misses_total{adapter}``: a request
  (of any route) named an adapter that was resident / had to be loaded (or was loading);
  ``adapterhub_adapter_cache_evictions_total{adapter}``: evictions (LRU or deletion) per adapter;
- the generation metrics (``GenerationMetrics``), measured on the event loop, where a request's tokens reach the
  HTTP side (``gen_service.GenerationRun``), so they are what a streaming client sees, less the network:
  ``adapterhub_generation_ttft_seconds`` (time to first token per sequence, from the request's arrival at
  ``ServingEngine.open_generation``, after tokenisation: its adapter's load and its wait for admission count), ``adapterhub_generation_itl_seconds`` (time between two
  successive tokens of a sequence; tokens held back for a stop string arrive together),
  ``adapterhub_generation_prompt_tokens_total`` / ``adapterhub_generation_tokens_total`` (prompt tokens of the
  submitted requests, each prompt once whatever ``n``, as ``usage.prompt_tokens``; new tokens streamed, as
  ``usage.completion_tokens``; their ``rate()`` is tokens/s), the same per ``model`` (the base model's id, an
  adapter's or a composition's name) with ``adapterhub_generation_requests_total{model}``,
  ``adapterhub_generation_model_prompt_tokens_total{model}``, ``adapterhub_generation_model_tokens_total{model}``,
  ``adapterhub_generation_finished_total{reason}`` (``stop``, ``length``, ``cancelled``, ``failed``), and gauges
  read from the engine's ``stats()`` when rendered: ``adapterhub_generation_running`` / ``_waiting`` sequences,
  ``adapterhub_generation_cache_tokens`` (keys/values stored), ``adapterhub_generation_reserved_tokens`` (cache
  reserved by the running sequences), and the counter ``adapterhub_generation_preempted_total`` (the engine's
  ``stats()["preempted"]``).

Only the event loop thread updates metrics, so no locks are needed.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ADAPTER_CACHE = (
    ("hit", "adapterhub_adapter_cache_hits_total", "Requests that found the adapter resident."),
    ("miss", "adapterhub_adapter_cache_misses_total", "Requests that had to wait for the adapter's load."),
    ("evict", "adapterhub_adapter_cache_evictions_total", "Evictions of the adapter."),
)
_GAUGES = (
    ("running", "adapterhub_generation_running", "Sequences decoding in the generation engine."),
    ("waiting", "adapterhub_generation_waiting", "Sequences waiting for admission to the generation engine."),
    ("cache_tokens", "adapterhub_generation_cache_tokens", "Tokens whose keys and values are cached."),
    (
        "reserved_tokens",
        "adapterhub_generation_reserved_tokens",
        "Cache tokens reserved by running sequences.",
    ),
)


def label_value(value: str) -> str:
    """``value`` escaped for a label in the text format (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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


class GenerationMetrics:
    """The generation side's counters and histograms (see the module docstring). ``state``: the engine's
    ``stats()`` (set by ``GenerationService``; None on a server that does not generate: no gauges then)."""

    def __init__(self) -> None:
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.itl = Histogram(TOKEN_BUCKETS)
        self.prompt_tokens = 0
        self.tokens = 0
        self.requests: Counter[str] = Counter()
        self.model_prompt_tokens: Counter[str] = Counter()
        self.model_tokens: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.state: Callable[[], Mapping[str, int]] | None = None

    def request(self, model: str, prompt_tokens: int) -> None:
        """A request for ``model`` was submitted with ``prompt_tokens`` prompt tokens (each prompt once)."""
        self.requests[model] += 1
        self.prompt_tokens += prompt_tokens
        self.model_prompt_tokens[model] += prompt_tokens

    def token(self, model: str, since: float, first: bool) -> None:
        """A new token of a sequence of ``model``, ``since`` seconds after the sequence's previous token (after
        its submission when ``first``)."""
        (self.ttft if first else self.itl).observe(since)
        self.tokens += 1
        self.model_tokens[model] += 1

    def finish(self, reason: str) -> None:
        self.finished[reason] += 1

    def lines(self) -> list[str]:
        out: list[str] = []
        for name, help_text, histogram in (
            ("adapterhub_generation_ttft_seconds", "Time to first token per sequence.", self.ttft),
            ("adapterhub_generation_itl_seconds", "Time between successive tokens of a sequence.", self.itl),
        ):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *histogram.lines(name)]
        for name, help_text, value in (
            ("adapterhub_generation_prompt_tokens_total", "Prompt tokens of submitted requests.",
             self.prompt_tokens),
            ("adapterhub_generation_tokens_total", "New tokens streamed to requests.", self.tokens),
        ):  # fmt: skip
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        for name, help_text, counts, label in (
            ("adapterhub_generation_requests_total", "Generation requests by model.", self.requests, "model"),
            ("adapterhub_generation_model_prompt_tokens_total", "Prompt tokens by model.",
             self.model_prompt_tokens, "model"),
            ("adapterhub_generation_model_tokens_total", "New tokens by model.", self.model_tokens, "model"),
            ("adapterhub_generation_finished_total", "Ended sequences by finish reason.", self.finished,
             "reason"),
        ):  # fmt: skip
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            out += [f'{name}{{{label}="{label_value(k)}"}} {v}' for k, v in sorted(counts.items())]
        if self.state is not None:
            stats = self.state()
            for key, name, help_text in _GAUGES:
                out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {stats[key]}"]
            name = "adapterhub_generation_preempted_total"
            out += [
                f"# HELP {name} Sequences preempted (cache freed, re-queued, recomputed) by the generation engine.",
                f"# TYPE {name} counter",
                f"{name} {stats['preempted']}",
            ]
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
        self.adapter_cache: Counter[tuple[str, str]] = Counter()  # (kind, adapter): hit, miss, evict
        self.generation = GenerationMetrics()
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

    def adapter_event(self, kind: str, loaded_now: int, name: str | None = None) -> None:
        """A registry event (``load``, ``evict``, ``load_error``, ``hit``, ``miss``) of adapter ``name``."""
        if kind in ("hit", "miss"):
            self.adapter_cache[(kind, name or "")] += 1
            return
        self.adapter_events[kind] += 1
        self.adapters_loaded = loaded_now
        if kind == "evict":
            self.adapter_cache[(kind, name or "")] += 1

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
        for kind, name, help_text in _ADAPTER_CACHE:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            lines += [
                f'{name}{{adapter="{label_value(adapter)}"}} {count}'
                for (k, adapter), count in sorted(self.adapter_cache.items())
                if k == kind
            ]
        lines += self.generation.lines()
        return "\n".join(lines) + "\n"
