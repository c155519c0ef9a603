"""Adapter arithmetic: ``model.average_adapter(new, [a, b, ...], weights, combine=...)`` makes a new adapter from
existing ones (task arithmetic, TIES, DARE), the way peft's ``add_weighted_adapter`` does for LoRA.

Every method, ``combine="linear"``: the weighted sum of the parameters, ``Σ w_i θ_i`` (the configs must be equal;
negative weights subtract -- task negation).

LoRA (peft's semantics exactly; ``s_i`` is adapter ``i``'s scaling, the result has ``alpha = r``, so scaling 1):

- ``linear``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``: equal ranks; ``A`` and ``B`` are
  combined separately, ``A`` with weights ``sign(w_i s_i)·sqrt(|w_i s_i|)`` and ``B`` with ``sqrt(|w_i s_i|)``. So
  ``linear`` gives ``(Σ a_i A_i)ᵀ(Σ b_i B_i)``, cross terms included -- not ``Σ w_i ΔW_i`` (use ``svd`` for that).
- ``svd`` (and ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``, ``magnitude_prune_svd``): ``ΔW_i = s_i B_i
  A_i`` combined (weighted sum, or TIES/DARE on ``ΔW``), then the truncated SVD of rank ``svd_rank`` (default: the
  largest rank): ``B = U_r S_r``, ``A = V_rᵀ``.
- ``cat``: rank ``Σ r_i``, ``A = [w_i s_i A_i]``, ``B = [B_i]``: exactly ``Σ w_i ΔW_i``.

TIES (Yadav et al. 2023): keep the ``density`` share of each tensor with the largest magnitude, elect a sign per
entry from the sum of the kept values, average the weighted values that agree with it. DARE (Yu et al. 2023): keep
each entry with probability ``density`` and rescale by ``1 / density``; ``dare_ties`` then elects signs as TIES.
DARE draws from torch's global generator in peft's order (per projection in the model's module order, the
adapters' ``A`` then their ``B``); ``seed`` seeds it for this call only (``torch.manual_seed(seed)`` before
peft's call gives the same masks). Targets are the union of the adapters' targets; an adapter without a
projection is skipped there, as peft does.

Copies of the model's values the adapters keep: ``trainable_token_indices`` is taken from the first adapter, with
rows starting at the model's own, as peft's ``add_weighted_adapter`` does (its new config is the first adapter's,
and its new token adapter starts at the embedding's rows); held biases (option ``bias``) are refused: peft's bias
option trains the base model's biases, shared by all its adapters, so it has no per-adapter biases to combine.

Heads: when every adapter has a flexible head of the same type and shapes, the new adapter gets the weighted sum
of them (``average_head=True``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from adapterhub.api.adapters import AdapterAPIMixin
from adapterhub.errors import ConfigError
from adapterhub.methods.base import AdapterModule
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.runtime.records import HeadRecord
from adapterhub.spec.combines import COMBINES, PARAM_COMBINES, SVD_COMBINES
from adapterhub.spec.configs import LoRAConfig, resolve_config

# ------------------------------------------------------------------------------------ merge functions (TIES, DARE)


def _prune(tensor: torch.Tensor, density: float, method: str) -> torch.Tensor:
    if density >= 1:
        return tensor
    if method == "magnitude":
        mask = torch.zeros_like(tensor).reshape(-1)
        k = int(density * tensor.numel())
        mask[torch.topk(tensor.abs().reshape(-1), k=k, largest=True)[1]] = 1
        return tensor * mask.reshape(tensor.shape)
    mask = torch.bernoulli(torch.full_like(tensor, fill_value=density))
    return tensor * mask / density


def _weighted(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return stacked * weights.view(weights.shape + (1,) * (stacked.dim() - 1))


def _disjoint(stacked: torch.Tensor, weights: torch.Tensor, sign_method: str) -> torch.Tensor:
    """TIES' elected-sign mean: the sign mask comes from the unweighted tensors (as in peft)."""
    signs = stacked.sign()
    magnitude = stacked.sum(dim=0) if sign_method == "total" else signs.sum(dim=0)
    agree = signs == torch.where(magnitude >= 0, 1, -1)
    mixed = (_weighted(stacked, weights) * agree).sum(dim=0)
    return mixed / torch.clamp(agree.sum(dim=0), min=1.0)


def combine_tensors(
    tensors: Sequence[torch.Tensor],
    weights: torch.Tensor,
    how: str,
    density: float,
    sign_method: str = "total",
) -> torch.Tensor:
    """One combination of task tensors: ``how`` is ``linear``, ``ties``, ``dare_linear``, ``dare_ties`` or
    ``magnitude_prune`` (the ``_svd`` suffix stripped)."""
    if how == "linear":
        return _weighted(torch.stack(list(tensors)), weights).sum(dim=0)
    if how in ("ties", "magnitude_prune"):
        stacked = torch.stack([_prune(t, density, "magnitude") for t in tensors])
    else:
        stacked = torch.stack([_prune(t, density, "random") for t in tensors])
    if how in ("ties", "dare_ties"):
        return _disjoint(stacked, weights, sign_method)
    return _weighted(stacked, weights).sum(dim=0)


# ------------------------------------------------------------------------------------ the API


class ArithmeticMixin(AdapterAPIMixin):
    """``average_adapter``, mixed into the model by ``adapterhub.init``."""

    def average_adapter(
        self,
        adapter_name: str,
        adapter_list: Sequence[str],
        weights: Sequence[float] | None = None,
        *,
        combine: str = "linear",
        density: float | None = None,
        svd_rank: int | None = None,
        seed: int | None = None,
        majority_sign_method: str = "total",
        average_head: bool = True,
        overwrite_ok: bool = False,
        set_active: bool = False,
    ) -> AdapterModule:
        """Add adapter ``adapter_name`` combining the adapters of ``adapter_list`` with ``weights`` (default: equal
        weights summing to 1). See the module docstring for ``combine``. Returns the new adapter module."""
        names = list(adapter_list)
        if not names:
            raise ConfigError("average_adapter needs at least one adapter to combine.")
        modules = [self._require_adapter(n) for n in names]
        weights = [1.0 / len(names)] * len(names) if weights is None else [float(w) for w in weights]
        if len(weights) != len(names):
            raise ConfigError(
                f"average_adapter got {len(weights)} weights for {len(names)} adapters {names}."
            )
        if combine not in COMBINES:
            raise ConfigError(f"Unknown combine {combine!r}; use one of {', '.join(COMBINES)}.")
        if majority_sign_method not in ("total", "frequency"):
            raise ConfigError(
                f"majority_sign_method must be 'total' or 'frequency', got {majority_sign_method!r}."
            )
        needs_density = any(word in combine for word in ("ties", "dare", "prune"))
        if needs_density and (density is None or not 0.0 <= density <= 1.0):
            raise ConfigError(
                f"combine={combine!r} needs density in [0, 1] (the share of entries kept), got {density!r}."
            )
        methods = {m.method for m in modules}
        if len(methods) > 1:
            raise ConfigError(
                f"average_adapter combines adapters of one method; {names} are "
                f"{', '.join(f'{n}: {m.method}' for n, m in zip(names, modules, strict=True))}."
            )
        if modules[0].average_refusal is not None:
            raise ConfigError(f"average_adapter cannot combine {names}: {modules[0].average_refusal}")
        held = [n for n, m in zip(names, modules, strict=True) if m.bias_paths()]
        if held:
            raise ConfigError(
                f"average_adapter cannot combine {held}: they keep their own copies of the model's biases (option "
                "bias). peft has no per-adapter bias to combine (its bias option trains the base model's biases, "
                "shared by all its adapters); here each adapter holds its own, and no combination of them is "
                "defined. Merge the adapter with model.merge_adapter (its biases go into the model, as peft's "
                "merge_and_unload), or combine adapters trained with bias='none'."
            )
        if len(names) == 1 and combine != "cat":
            combine = "linear"  # as peft
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            # LoRA's A/B arithmetic for adapters with LoRA layers (not LoHa / LoKr, which share LoRA's adapter)
            if isinstance(modules[0], LoRAAdapter) and issubclass(type(modules[0]).layer_class, LoRALayer):
                if any(m.config.by_name for m in modules):  # type: ignore[attr-defined]
                    raise ConfigError(
                        "average_adapter combines LoRA adapters on spec points (targets); adapters targeted by "
                        "module name (target_modules) cannot be combined yet. Merge them one by one with "
                        "model.merge_adapter instead."
                    )
                config, tensors = self._combine_lora(
                    names, modules, weights, combine, density or 1.0, svd_rank, majority_sign_method
                )
                # as peft (its new config is the first adapter's): the first adapter's trainable_token_indices,
                # with rows starting at the model's own (the adapters' rows are not combined)
                tokens = modules[0].config.to_dict().get("trainable_token_indices")
                if tokens:
                    config["trainable_token_indices"] = tokens
            else:
                held = [n for n, m in zip(names, modules, strict=True) if m.token_paths()]
                if held:
                    raise ConfigError(
                        f"average_adapter cannot combine {held} ({modules[0].method}): they keep their own "
                        "embedding rows (trainable_token_indices), which the weighted sum of parameters would "
                        "scale. Combine adapters trained without them, or merge one with model.merge_adapter."
                    )
                config, tensors = _combine_params(names, modules, weights, combine)
        head = self._average_heads(adapter_name, names, weights) if average_head else None
        self.add_adapter(adapter_name, config, overwrite_ok=overwrite_ok)
        module = self._store.adapters[adapter_name]
        with torch.no_grad():
            state = module.state_dict()
            for key, tensor in tensors.items():
                state[key].copy_(tensor.to(state[key].dtype))
        if head is not None:
            self._prepare_head(head, adapter_name, overwrite_ok=True)()
        if set_active:
            self.set_active_adapters(adapter_name)
        return module  # type: ignore[return-value]

    # ---------------------------------------------------------------- LoRA
    def _point_order(self) -> list[str]:
        """Linear points in the order the model registers their modules (peft's iteration order)."""
        layer = self._layers()[0]
        order = [name for name, _ in layer.named_modules()]
        spec = self._spec
        return sorted(
            spec.linears, key=lambda p: (order.index(spec.linears[p].module), spec.linears[p].part or (0, 1))
        )

    def _combine_lora(
        self,
        names: list[str],
        modules: list[AdapterModule],
        weights: list[float],
        combine: str,
        density: float,
        svd_rank: int | None,
        sign_method: str,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        configs: list[LoRAConfig] = [m.config for m in modules]  # type: ignore[misc]
        ranks = [c.r for c in configs]
        if combine in PARAM_COMBINES and len(set(ranks)) > 1:
            raise ConfigError(
                f"combine={combine!r} combines lora_A and lora_B directly and needs equal ranks; "
                f"{', '.join(f'{n}: r={r}' for n, r in zip(names, ranks, strict=True))}. Use combine='svd' or 'cat'."
            )
        if combine in PARAM_COMBINES:
            rank = ranks[0]
        elif combine == "cat":
            rank = sum(ranks)
        else:
            rank = svd_rank or max(ranks)
        targets = [p for p in self._point_order() if any(p in c.targets for c in configs)]
        leave_out = sorted(set.intersection(*(set(c.leave_out) for c in configs)))
        config = {
            "method": "lora",
            "r": rank,
            "alpha": float(rank),
            "dropout": configs[0].dropout,
            "targets": [p for p in self._spec.linears if p in targets],
            "init": configs[0].init,
            "leave_out": leave_out,
        }
        tensors: dict[str, torch.Tensor] = {}
        for layer in range(self.model_dims().num_layers):
            if layer in leave_out:
                continue
            for point in targets:
                present = [
                    (n, m.layer_at(layer, point), w)  # type: ignore[attr-defined,operator]
                    for n, m, w in zip(names, modules, weights, strict=True)
                    if m.present(layer, "linear", point)
                ]
                if not present:  # only adapters that leave this layer out target it: no update here
                    d_in, d_out = self.model_dims().linear_shape(point, layer)
                    tensors[f"layers.{layer}.{point}.lora_A"] = torch.zeros(rank, d_in)
                    tensors[f"layers.{layer}.{point}.lora_B"] = torch.zeros(d_out, rank)
                    continue
                a, b = _combine_lora_layer(present, combine, rank, density, sign_method, layer, point)
                tensors[f"layers.{layer}.{point}.lora_A"] = a
                tensors[f"layers.{layer}.{point}.lora_B"] = b
        return config, tensors

    # ---------------------------------------------------------------- heads
    def _average_heads(self, new: str, names: list[str], weights: list[float]) -> HeadRecord | None:
        heads = self._store.heads
        if not all(n in heads for n in names):
            return None
        records = [self._head_record(n) for n in names]
        first = records[0]
        assert first is not None
        same = all(
            r is not None
            and r.head_type == first.head_type
            and r.options == first.options
            and {k: v.shape for k, v in r.tensors.items()} == {k: v.shape for k, v in first.tensors.items()}
            for r in records
        )
        if not same:
            warnings.warn(
                f"The heads of {names} differ in type, options or shapes; {new!r} gets no head.", stacklevel=3
            )
            return None
        tensors: dict[str, torch.Tensor] = {}
        for key in first.tensors:
            parts = [
                w * r.tensors[key].float() for w, r in zip(weights, records, strict=True) if r is not None
            ]
            tensors[key] = torch.stack(parts).sum(dim=0)
        return HeadRecord(new, first.head_type, dict(first.options), first.id2label, tensors)


def _combine_lora_layer(
    present: list[tuple[str, LoRALayer, float]],
    combine: str,
    rank: int,
    density: float,
    sign_method: str,
    layer: int,
    point: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (rank, d_in), B (d_out, rank))`` of the new adapter at one projection."""
    first = present[0][1]
    d_out, d_in = first.lora_B.shape[0], first.lora_A.shape[1]
    if combine == "cat":
        a = torch.zeros(rank, d_in)
        b = torch.zeros(d_out, rank)
        stacked_a = torch.cat([lora.lora_A.float() * w * lora.scaling for _, lora, w in present], dim=0)
        stacked_b = torch.cat([lora.lora_B.float() for _, lora, _ in present], dim=1)
        a[: stacked_a.shape[0]] = stacked_a
        b[:, : stacked_b.shape[1]] = stacked_b
        return a, b
    if combine in SVD_COMBINES:
        deltas = [lora.weight_delta().float() for _, lora, _ in present]  # (d_out, d_in)
        how = "linear" if combine == "svd" else combine[: -len("_svd")]
        delta = combine_tensors(deltas, torch.tensor([w for _, _, w in present]), how, density, sign_method)
        if rank > min(d_out, d_in):
            raise ConfigError(
                f"svd_rank={rank} exceeds the rank a ({d_out} x {d_in}) update at layer {layer} {point} can have."
            )
        u, s, vh = torch.linalg.svd(delta, full_matrices=True)
        return vh[:rank, :], u[:, :rank] @ torch.diag(s[:rank])
    scaled = [w * lora.scaling for _, lora, w in present]
    weights_a = torch.tensor([math.sqrt(abs(x)) * (1 if x >= 0 else -1) for x in scaled])
    weights_b = torch.tensor([math.sqrt(abs(x)) for x in scaled])
    a = combine_tensors(
        [lora.lora_A.float() for _, lora, _ in present], weights_a, combine, density, sign_method
    )
    b = combine_tensors(
        [lora.lora_B.float() for _, lora, _ in present], weights_b, combine, density, sign_method
    )
    return a, b


# ------------------------------------------------------------------------------------ other methods


def _combine_params(
    names: list[str], modules: list[AdapterModule], weights: list[float], combine: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if combine != "linear":
        raise ConfigError(
            f"combine={combine!r} is defined for LoRA; {modules[0].method} adapters {names} combine with "
            "combine='linear' (the weighted sum of their parameters)."
        )
    configs = [m.config.to_dict() for m in modules]
    differ = [n for n, c in zip(names, configs, strict=True) if c != configs[0]]
    if differ:
        raise ConfigError(
            f"combine='linear' sums parameters of adapters with equal configs; {differ} differ from {names[0]!r} "
            f"({configs[0]})."
        )
    states = [dict(m.state_dict()) for m in modules]
    trained = set(dict(modules[0].named_parameters()))
    # buffers (VeRA's frozen projections: equal in adapters of equal configs) are kept, not summed
    tensors = {
        key: sum(w * s[key].float() for w, s in zip(weights, states, strict=True))
        if key in trained
        else states[0][key]
        for key in states[0]
    }
    config = resolve_config(configs[0]).to_dict()
    return config, tensors  # type: ignore[return-value]
