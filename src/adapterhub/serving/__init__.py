"""Multi-adapter inference server: one base model, many adapters, requests for different adapters and heads in
one forward pass (``ServingEngine``; HTTP app in ``adapterhub.serving.app``; ``adapterhub serve-model``).

Modules: ``sources`` (where an adapter comes from), ``registry`` (loaded adapters, LRU, single-flight loads),
``encoding`` (inputs -> token rows), ``passes`` (one BatchSplit pass for many requests), ``predictions`` (head
outputs -> JSON), ``generation`` (causal-LM decoding), ``scheduler`` (batching loop), ``metrics`` (Prometheus),
``engine`` (the public API), ``app`` (FastAPI), ``cli``. Importing this package imports no torch. The serving layer
may import api, data, hub and below, never training, export or cli.
"""

from typing import Any

__all__ = ["Completion", "GenerationEngine", "GenerationHandle"]


def __getattr__(name: str) -> Any:  # torch is imported only when the engine is asked for
    if name in __all__:
        from adapterhub.serving import gen_engine

        return getattr(gen_engine, name)
    raise AttributeError(f"module 'adapterhub.serving' has no attribute {name!r}")
