"""Multi-adapter inference server: one base model, many adapters, requests for different adapters and heads in
one forward pass (``ServingEngine``; HTTP app in ``adapterhub.serving.app``; ``adapterhub serve-model``).

Modules: ``sources`` (where an adapter comes from), ``registry`` (loaded adapters, LRU, single-flight loads),
``encoding`` (inputs -> token rows), ``passes`` (one BatchSplit pass for many requests), ``predictions`` (head
outputs -> JSON), ``generation`` (causal-LM decoding), ``scheduler`` (batching loop), ``metrics`` (Prometheus),
``engine`` (the public API), ``app`` (FastAPI), ``cli``. Importing this package imports no torch. The serving layer
may import api, data, hub and below, never training, export or cli.
"""
