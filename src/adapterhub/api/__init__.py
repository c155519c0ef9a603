"""The api layer: what a user calls on a model.

``adapterhub.init(model)`` / ``deinit`` (``api.model``) add and remove the adapter API; the mixins give it its
methods: adding, training, activating, saving and loading adapters (``api.adapters``, which resolves hub names
through the hub client), fusion (``api.fusion``), merging and arithmetic (``api.merging``, ``api.arithmetic``),
prefix-tuning helpers (``api.prefix``) and the summary table (``api.summary``). It may import every layer below
it: spec, methods, runtime, heads, io and hub; data, training, serving, export and cli build on it.
"""
