"""Merging: fold an adapter's update into the base model's weights, and take it out again.

For a method whose update is a change of weights (``AdapterModule.mergeable``: LoRA), ``merge_adapter(name)`` adds
each ``ΔW`` the method reports (``merged_deltas``) to the projection's weight (its slice, for a fused projection;
transposed, for ``Conv1D``), so the model computes the same outputs without running the adapter: inference costs
what the bare model costs. ``unmerge_adapter`` subtracts the same ``ΔW`` again. A method whose merge replaces
parameters (``merge_writes``: LN tuning writes its tuned norm into the model's) has them copied in, and the
originals it kept copied back on unmerge, bit for bit. Copies of the model's values a LoRA adapter keeps (option
``bias``: its biases ``b'``; ``trainable_token_indices``: embedding rows) are written into the model as peft's
``merge_and_unload`` leaves them (``b ← b'``; the embedding's rows at those ids ← the copies, a tied head sharing
them), the values overwritten kept beside the merge and put back by ``unmerge_adapter`` bit for bit; the hooks that
swap the copies in leave a merged adapter out. While an adapter is merged it
applies in every call: per-call setups, BatchSplit, Parallel, Fuse and Split over it, training it, deleting it and
replacing it raise a ``ConfigError`` that says to unmerge first.

A quantised base (bitsandbytes 4-/8-bit layers) cannot hold ``dequant(W) + ΔW`` in its codes without
re-quantising, which would change the outputs. ``merge_adapter(name, dequantize=True)`` first replaces each
quantised layer the adapter targets by a plain ``nn.Linear`` holding ``dequant(W)`` (``runtime.quantized``), then
merges into it: the merged model computes what the unmerged one did (within float rounding), in float. Without the
flag, merging into a quantised layer raises naming it. Unmerging leaves the layers dequantised.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adapterhub.api.adapters import AdapterAPIMixin
from adapterhub.errors import ConfigError
from adapterhub.methods.base import LINEAR, MODULE, MODULE_LAYER, AdapterModule
from adapterhub.runtime.layers import layer_stacks
from adapterhub.runtime.quantized import dequantize_modules, quantization_of
from adapterhub.spec.composition import setup_names


class MergeMixin(AdapterAPIMixin):
    """``merge_adapter`` / ``unmerge_adapter``, mixed into the model by ``adapterhub.init``."""

    def _apply_deltas(self, name: str, sign: float) -> None:
        module = self._require_adapter(name)
        with torch.no_grad():
            writes = module.merge_writes(self._base_linear, sign > 0)
            if writes is not None:  # the method replaces the base parameters (LN tuning)
                for layer, point, value, bias_value in writes:
                    weight, bias = self._base_linear(layer, point)
                    weight.copy_(value)
                    if bias_value is not None and bias is not None:
                        bias.copy_(bias_value)
                return
            for layer, point, delta, bias_delta in module.merge_updates(self._base_linear, sign > 0):
                weight, bias = self._base_linear(layer, point)  # views: (d_out, d_in), (d_out,)
                weight.add_(delta.to(weight.dtype))
                if bias_delta is not None and bias is not None:
                    bias.add_(bias_delta.to(bias.dtype))

    def _check_held_free(self, name: str, module: AdapterModule) -> None:
        """A bias or embedding row held by adapter ``name`` must not be held by an adapter merged already: the
        model's one bias / row cannot hold both copies."""
        held = set(module.bias_paths()) | set(module.token_paths())
        for other in self._store.merged:
            merged: AdapterModule = self._store.adapters[other]  # type: ignore[assignment]
            both = sorted(held & (set(merged.bias_paths()) | set(merged.token_paths())))
            if both:
                raise ConfigError(
                    f"Adapters {other!r} (merged) and {name!r} both keep their own copy of {both} (option bias / "
                    f"trainable_token_indices); the model holds one. Unmerge {other!r} first, or merge only one "
                    "of them."
                )

    def _write_held(self, module: AdapterModule) -> list[tuple[str, torch.Tensor | None, torch.Tensor]]:
        """Write the copies ``module`` keeps into the model, as peft's ``merge_and_unload`` leaves them: each held
        bias ``b'`` (option ``bias``) over the module's bias, each held row (``trainable_token_indices``) over the
        embedding's row of its id (a tied output head shares the weight, so it changes too). Returns what was
        overwritten, ``(path, row ids (n,) or None for a bias, values)``, for ``_restore_held``."""
        root = self._module()
        originals: list[tuple[str, torch.Tensor | None, torch.Tensor]] = []
        with torch.no_grad():
            for path in module.bias_paths():
                bias: torch.Tensor = root.get_submodule(path).bias  # type: ignore[assignment]  # (d,)
                originals.append((path, None, bias.detach().clone()))
                bias.copy_(module.held_bias(path).to(bias.dtype))
            for path in module.token_embeddings():
                weight: torch.Tensor = root.get_submodule(path).weight  # type: ignore[assignment]  # (vocab, d)
                ids, rows = module.token_delta(path)  # rows: (n, d)
                index = torch.tensor(ids, device=weight.device)  # (n,)
                originals.append((path, index, weight[index].detach().clone()))
                weight.index_copy_(0, index, rows.detach().to(weight.dtype))
        return originals

    def _restore_held(self, originals: list[tuple[str, torch.Tensor | None, torch.Tensor]]) -> None:
        """Put back the biases and embedding rows ``_write_held`` overwrote, bit for bit."""
        root = self._module()
        with torch.no_grad():
            for path, index, value in reversed(originals):
                target: Any = root.get_submodule(path)
                if index is None:
                    target.bias.copy_(value)
                else:
                    target.weight.index_copy_(0, index, value)

    def _quantized_targets(self, module: AdapterModule) -> list[tuple[nn.Module, str]]:
        """``(root, path)`` of every bitsandbytes-quantised module ``module`` targets (a layer and its projection's
        path in it, or the model and a module path)."""
        stacks = layer_stacks(self._module(), self._spec)
        found: list[tuple[nn.Module, str]] = []
        for layer in [*range(len(stacks)), MODULE_LAYER]:
            for kind, point in module.points(layer):
                if kind == LINEAR:
                    root, path = stacks[layer][0], stacks[layer][1].linears[point].module
                elif kind == MODULE:
                    root, path = self._module(), point
                else:
                    continue
                if quantization_of(root.get_submodule(path)) is not None:
                    found.append((root, path))
        return found

    def merge_adapter(self, name: str, *, dequantize: bool = False) -> None:
        """Fold adapter ``name`` into the base weights: outputs stay the same (within float rounding) and the
        adapter no longer runs as a separate computation. It must be the active setup, part of a Stack that is,
        or nothing may be active (then it becomes the active setup). ``dequantize``: on a quantised base, replace
        the targeted quantised layers by float ``nn.Linear`` layers first (required there)."""
        module = self._require_adapter(name)
        quantized = self._quantized_targets(module) if module.mergeable else []
        if quantized and not dequantize:
            kind = quantization_of(quantized[0][0].get_submodule(quantized[0][1]))
            raise ConfigError(
                f"Adapter {name!r} targets {len(quantized)} layer(s) quantised by bitsandbytes ({kind}); their "
                "codes cannot hold the merged weights. Call merge_adapter(name, dequantize=True) to replace them by "
                "float nn.Linear layers holding dequant(W) + delta, or keep the adapter unmerged."
            )
        store = self._store
        if name in store.merged:
            raise ConfigError(f"Adapter {name!r} is merged already.")
        self._check_held_free(name, module)
        if store.skip_layers:
            raise ConfigError(
                f"skip_layers={sorted(store.skip_layers)} leaves those layers' adapters out, but a merged adapter "
                "applies in every layer; call model.set_skip_layers(None) before merging."
            )
        if not module.mergeable:
            list(module.merged_deltas())  # raises the method's own explanation
        setup = store.active_setup if store.active_setup is not None else name
        if name not in setup_names(setup):
            raise ConfigError(
                f"Adapter {name!r} is not in the active setup {store.active_setup!r}: merging it would change what "
                f"the model computes. Activate it first (model.set_active_adapters({name!r}))."
            )
        store.merged[name] = []
        try:
            self._check_merged(setup)
        except ConfigError:
            del store.merged[name]
            raise
        for root, path in quantized:
            dequantize_modules(root, [path])
        try:
            self._apply_deltas(name, 1.0)  # a method that cannot merge raises before the first weight changes
        except ConfigError:
            del store.merged[name]
            raise
        store.merged[name] = self._write_held(module)
        store.active_setup = setup
        store.changed()

    def unmerge_adapter(self, name: str | None = None) -> None:
        """Take merged adapter ``name`` (default: every merged adapter) out of the base weights again; it then runs
        as a separate computation as before merging. The base weights are restored within float rounding."""
        store = self._store
        names = list(store.merged) if name is None else [name]
        for item in names:
            if item not in store.merged:
                merged = ", ".join(store.merged) or "none"
                raise ConfigError(f"Adapter {item!r} is not merged (merged adapters: {merged}).")
        for item in reversed(names):
            self._apply_deltas(item, -1.0)
            self._restore_held(store.merged.pop(item))
        store.changed()

    @property
    def merged_adapters(self) -> list[str]:
        """Names of the adapters merged into the base weights."""
        return list(self._store.merged)
