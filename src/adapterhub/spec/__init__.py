"""The spec layer, the lowest: plain data that needs neither torch nor transformers.

It holds the composition blocks (``Stack``, ``Fuse``, ...), the method configs and presets, the architecture specs
and their entries (where adapters attach in each model family), the adapter manifest the hub stores and the names
of the ways adapters are combined. Modules here import only the standard library, ``adapterhub.errors``,
``adapterhub.version`` and each other, so that the CLI, the hub client and the torch-free hub server can use them.
"""
