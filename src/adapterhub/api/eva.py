"""Model API for EVA (``init="eva"``): ``model.get_eva_state_dict`` runs the data pass, ``model.initialize_eva``
also writes its result into the adapter; the shape of peft 0.21.2's ``get_eva_state_dict`` /
``initialize_lora_eva_weights``, with the adapter's name first.

The pass runs the model on batches with no adapter active (``AdapterStore.observing``: the hooks of the linear and
module points hand each target's input ``x (batch, seq, d_in)`` to the pass instead of running adapters). The rows
it keeps are chosen per batch by ``prepare_model_inputs_fn(batch, config)`` (default: the positions where
``attention_mask`` is 1 and, with ``use_label_mask``, ``labels != label_mask_value``) and
``prepare_layer_inputs_fn(x, model_input, path)`` (default: ``x`` at those positions, ``(n, d_in)``). The first
batch finds targets with equal inputs (one SVD for each group); then the batches are cycled (the first pass's
batches replayed, as ``itertools.cycle``) until every target's components up to its current rank have converged,
ranks being redistributed after each batch (``adapterhub.methods.eva``). The adapter is then rebuilt by name
(``target_modules``: the targets that kept a rank; ``rank_pattern`` / ``alpha_pattern``: ``{path: value}`` where
they differ from ``r`` / ``alpha``, as peft writes them) with ``A`` the components and ``B = 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import cycle
from typing import Any

import torch

from adapterhub.api.data_pass import (
    UNREACHED,
    DataPassMixin,
    call_model,
    check_not_empty,
    refuse_missing,
    require_dataloader,
    to_device,
)
from adapterhub.errors import ConfigError
from adapterhub.methods.base import MODULE, MODULE_LAYER, PointInputs
from adapterhub.methods.eva import TargetSVD, distribute_ranks, equal_groups
from adapterhub.methods.lora import LoRAAdapter
from adapterhub.spec.configs import LoRAConfig

RHO_CEILING = 1000  # peft: rho above this is capped at (largest parameter dimension) // r


def language_model_positions(inputs: Any, config: LoRAConfig) -> torch.Tensor:
    """``(n, 2)`` (row, position) indices of the tokens EVA reads: ``attention_mask`` (default all ones) and, with
    ``eva_config`` ``use_label_mask``, ``labels != label_mask_value``."""
    if not isinstance(inputs, Mapping):
        raise ConfigError(
            "EVA's default prepare_model_inputs_fn reads a dict batch (input_ids, attention_mask, labels); pass "
            "prepare_model_inputs_fn=None and prepare_layer_inputs_fn=None to use every position of other inputs."
        )
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()  # (batch, seq)
    eva = config.eva
    if eva.use_label_mask and "labels" in inputs:
        mask = torch.logical_and(mask, inputs["labels"] != eva.label_mask_value)
    return mask.nonzero()


def rows_at_positions(x: torch.Tensor, positions: torch.Tensor, path: str) -> torch.Tensor:
    """``x (batch, seq, d)`` at ``positions (n, 2)``: ``(n, d)``."""
    return x[positions.T.unbind()]


def all_rows(x: torch.Tensor, model_input: Any, path: str) -> torch.Tensor:
    """Every row of ``x (..., d)``: ``(n, d)``."""
    return x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x


class EvaMixin(DataPassMixin):
    """``get_eva_state_dict`` / ``initialize_eva``, mixed into the model by ``adapterhub.init``."""

    @torch.no_grad()
    def get_eva_state_dict(
        self,
        adapter_name: str,
        dataloader: Iterable[Any],
        *,
        forward_fn: Callable[[Any, Any], Any] | None = call_model,
        prepare_model_inputs_fn: Callable[[Any, LoRAConfig], Any] | None = language_model_positions,
        prepare_layer_inputs_fn: Callable[[torch.Tensor, Any, str], torch.Tensor] | None = rows_at_positions,
        max_steps: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """EVA's data pass for adapter ``adapter_name``: ``{module path: A (r', d_in)}`` for every target (``r'``
        may be 0: the target is then dropped). ``dataloader``: batches (dicts for the default
        functions) cycled until convergence; ``max_steps``: give up (raising) after that many batches (default:
        none, as peft)."""
        _, config, targets = self._data_targets(adapter_name, "eva")
        eva = config.eva
        forward = forward_fn or call_model
        prepare_model = prepare_model_inputs_fn or (lambda batch, _config: batch)
        prepare_layer = prepare_layer_inputs_fn or all_rows
        check_not_empty(dataloader, "EVA")
        length = len(dataloader) if hasattr(dataloader, "__len__") else None  # type: ignore[arg-type]
        rho = eva.rho
        if rho > RHO_CEILING:
            largest = max(max(p.shape) for p in self.parameters())  # type: ignore[attr-defined]
            rho = min(rho, largest // config.r)
        device = next(self.parameters()).device  # type: ignore[attr-defined]
        by_key = {t.key: t.path for t in targets}
        max_components = {t.path: round(t.r * rho) for t in targets}
        budget = sum(t.r for t in targets)
        training = self.training  # type: ignore[attr-defined]
        self.eval()  # type: ignore[attr-defined]
        try:
            first = to_device(next(iter(dataloader)), device)
            model_input = prepare_model(first, config)
            seen: dict[str, torch.Tensor] = {}

            def record(layer: int, kind: str, point: str, inputs: PointInputs) -> None:
                path = by_key.get((MODULE_LAYER, point) if kind == MODULE else (layer, point))
                if path is not None and path not in seen:
                    seen[path] = prepare_layer(inputs.x, model_input, path)  # type: ignore[attr-defined]

            self._observed_forward(record, forward, first)
            missing = [t.path for t in targets if t.path not in seen]
            refuse_missing(missing, adapter_name, "EVA's forward pass gave no inputs to", UNREACHED)
            names = [t.path for t in targets]
            equal = equal_groups(names, seen)
            for rep in set(equal.values()):
                group = [rep, *(m for m, r in equal.items() if r == rep)]
                top = max(max_components[n] for n in group)
                for n in group:
                    max_components[n] = top
            svds = {n: TargetSVD(max_components[n], eva.tau, n) for n in names if n not in equal}
            layer_map = {**{n: n for n in svds}, **equal}
            converged = dict.fromkeys(svds, False)
            ranks = dict(max_components)
            steps = 0
            for batch in cycle(dataloader):
                batch = to_device(batch, device)
                model_input = prepare_model(batch, config)
                for n, svd in svds.items():
                    done = bool(torch.all(svd.converged[: ranks[n]]))
                    if not converged[n] and done:
                        converged[n] = True
                    elif converged[n] and not done:
                        converged[n] = False
                if all(converged.values()):
                    break
                if max_steps is not None and steps >= max_steps:
                    raise ConfigError(
                        f"EVA did not converge within max_steps={max_steps} batches (components still moving at "
                        f"{', '.join(n for n, c in converged.items() if not c)}); give more batches or lower "
                        "eva_config tau."
                    )

                def update(
                    layer: int, kind: str, point: str, inputs: PointInputs, rows_of: Any = model_input
                ) -> None:
                    path = by_key.get((MODULE_LAYER, point) if kind == MODULE else (layer, point))
                    if path in svds and not converged[path]:
                        svds[path].update(prepare_layer(inputs.x, rows_of, path))  # type: ignore[attr-defined]

                self._observed_forward(update, forward, batch)
                steps += 1
                if not all(svd.started for svd in svds.values()):
                    if length is not None and steps >= length:
                        short = [f"{n} (needs {s.svd.k})" for n, s in svds.items() if not s.started]
                        raise ConfigError(
                            "EVA's dataloader yields too few input rows (after the attention / label masks) per "
                            f"batch for target(s) {', '.join(short)}: each batch must give at least round(r * rho) "
                            "rows. Use larger batches, or a smaller r or rho."
                        )
                    continue
                ratios = {n: s.svd.ratio for n, s in svds.items()}
                ranks = distribute_ranks(ratios, layer_map, equal, budget, max_components)  # type: ignore[arg-type]
        finally:
            self.train(training)  # type: ignore[attr-defined]
        out: dict[str, torch.Tensor] = {}
        for n, rank in ranks.items():
            svd = svds[layer_map[n]]
            if not bool(torch.all(svd.converged[:rank])):
                raise ConfigError(f"EVA assigned rank {rank} to {n} before its components converged (a bug).")
            components = svd.svd.components
            assert components is not None and svd.svd.singular_values is not None
            a = components[:rank]  # (r', d_in): a view, as peft's
            if eva.whiten:  # in place, as peft: targets sharing one SVD divide its rows once each
                a /= svd.svd.singular_values[:rank].sqrt().reshape(-1, 1)
            out[n] = a
        return {n: a.to(device) for n, a in out.items()}

    @torch.no_grad()
    def initialize_eva(
        self,
        adapter_name: str,
        dataloader: Iterable[Any] | None = None,
        *,
        eva_state_dict: Mapping[str, torch.Tensor] | None = None,
        **pass_options: Any,
    ) -> LoRAConfig:
        """Initialise ``init="eva"`` adapter ``adapter_name`` from data (``get_eva_state_dict(adapter_name,
        dataloader, **pass_options)``) or from a given ``eva_state_dict`` (``{path: A (r', d_in)}``): the adapter
        is rebuilt by name with the redistributed ranks (``alpha`` scaled by ``r' / r`` with
        ``adjust_scaling_factors``; targets of rank 0 dropped), ``A`` the components, ``B = 0``. Returns the new
        config (which ``save_adapter`` writes, peft's ``rank_pattern`` / ``alpha_pattern`` included)."""
        _, config, targets = self._data_targets(adapter_name, "eva")
        if eva_state_dict is None:
            batches = "batches whose target inputs EVA decomposes"
            dataloader = require_dataloader(
                dataloader, adapter_name, "eva", batches, "eva_state_dict", "get_eva_state_dict"
            )
            eva_state_dict = self.get_eva_state_dict(adapter_name, dataloader, **pass_options)
        states = dict(eva_state_dict)
        kept: list[str] = []
        rank_pattern: dict[str, int] = {}
        alpha_pattern: dict[str, float] = {}
        self._check_covers(
            states,
            targets,
            adapter_name,
            "eva_state_dict has no components",
            "get_eva_state_dict",
            "; a (0, d_in) tensor drops a target",
        )
        for t in targets:
            rank = int(states[t.path].shape[0])
            if rank == 0:
                continue
            alpha = t.alpha * (rank / t.r) if rank != t.r and config.eva.adjust_scaling_factors else t.alpha
            kept.append(t.path)
            if rank != config.r:
                rank_pattern[t.path] = rank
            if alpha != config.alpha:
                alpha_pattern[t.path] = alpha
        new = config.replace(
            target_modules=tuple(kept),
            leave_out=(),
            rank_pattern=tuple(rank_pattern.items()),
            alpha_pattern=tuple(alpha_pattern.items()),
        )
        self.add_adapter(adapter_name, new, overwrite_ok=True)
        module = self._store.adapters[adapter_name]
        assert isinstance(module, LoRAAdapter)
        for (layer, point), path in module.module_paths().items():
            lora = module.layer_at(layer, ("module", path) if layer == MODULE_LAYER else point)
            lora.lora_A.copy_(states[path].to(lora.lora_A.dtype))  # (r', d_in)
            lora.lora_B.zero_()
        module.awaiting_data = False
        return new
