"""The runtime layer: what runs adapters inside a model's forward pass.

It holds the per-call state (which adapters a call runs, kept per thread), walking a model's layers by its
architecture spec, the hooks that attach adapters to the modules a spec names (residual sites, linear projections,
attention through transformers' ``AttentionInterface``), the composition interpreter, the fusion core, the adapter
store on a model, the ``Parallel`` runtime, the model core the public mixins build on, and the in-memory records
an adapter is loaded from. It may import ``adapterhub.spec`` and ``adapterhub.methods`` (and ``errors``/``version``),
never a layer above it (heads, io, hub, api, ...).
"""
