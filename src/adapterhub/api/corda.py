"""Model API for CorDA (``init="corda"``): ``model.get_corda_covariance`` runs the data pass,
``model.initialize_corda`` also decomposes each target and writes ``A``, ``B`` and the residual base (peft 0.21.2's
``preprocess_corda`` followed by ``get_peft_model``, with the adapter added first and its name given).

The pass runs ``forward_fn(model, batch)`` on each batch with no adapter active; each call through a target hands
its input ``x (..., d_in)`` (all rows: ``(n, d_in)``, padding included, as peft) to the covariance
(``adapterhub.methods.corda``). peft's hook reads ``input.squeeze(0)``, i.e. batches of one sequence; a batch of
several here adds all its rows as one pass's sample, which equals peft's for batches of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adapterhub.api.data_pass import (
    UNREACHED,
    DataPassMixin,
    DataTarget,
    call_model,
    check_not_empty,
    refuse_missing,
    require_dataloader,
    to_device,
)
from adapterhub.methods.corda import corda_factors, scaled_gram
from adapterhub.methods.lora_init import require_float_weight


class CordaMixin(DataPassMixin):
    """``get_corda_covariance`` / ``initialize_corda``, mixed into the model by ``adapterhub.init``."""

    @torch.no_grad()
    def get_corda_covariance(
        self,
        adapter_name: str,
        dataloader: Iterable[Any],
        *,
        forward_fn: Callable[[Any, Any], Any] | None = call_model,
    ) -> dict[str, torch.Tensor]:
        """CorDA's data pass for adapter ``adapter_name`` (``init="corda"``): ``{module path: C (d_in, d_in)}``, the
        mean over forward calls of each target's scaled input Gram matrix (peft's ``covariance_file`` holds the
        same dict, which ``initialize_corda(covariance=...)`` takes)."""
        _, config, targets = self._fresh_targets(adapter_name, "corda")
        check_not_empty(dataloader, "CorDA")
        float16 = config.corda.use_float16_for_covariance
        sums: dict[str, torch.Tensor] = {}
        counts = dict.fromkeys((t.path for t in targets), 0)

        def add(target: DataTarget, x: torch.Tensor) -> None:
            gram = scaled_gram(x.reshape(-1, x.shape[-1]), float16, target.path)  # (d_in, d_in)
            sums[target.path] = sums[target.path] + gram if target.path in sums else gram
            counts[target.path] += 1

        device = next(self.parameters()).device  # type: ignore[attr-defined]
        forward = forward_fn or call_model
        observer = self._observer_for(targets, add)
        training = self.training  # type: ignore[attr-defined]
        self.eval()  # type: ignore[attr-defined]
        try:
            for batch in dataloader:
                self._observed_forward(observer, forward, to_device(batch, device))
        finally:
            self.train(training)  # type: ignore[attr-defined]
        missing = [path for path, count in counts.items() if count == 0]
        refuse_missing(missing, adapter_name, "CorDA's forward passes gave no inputs to", UNREACHED)
        return {path: sums[path] / counts[path] for path in counts}

    @torch.no_grad()
    def initialize_corda(
        self,
        adapter_name: str,
        dataloader: Iterable[Any] | None = None,
        *,
        covariance: Mapping[str, torch.Tensor] | None = None,
        **pass_options: Any,
    ) -> None:
        """Initialise ``init="corda"`` adapter ``adapter_name`` from data (``get_corda_covariance(adapter_name,
        dataloader, **pass_options)``) or from a given ``covariance`` (``{module path: C (d_in, d_in)}``, e.g.
        peft's ``covariance_file``): per target, ``A``, ``B`` from the SVD of ``W C'`` (``corda_config``'s
        ``corda_method``: ``ipm`` the largest singular values, ``kpm`` the smallest) and the base becomes
        ``W - s B A``; the adapter keeps ``A0 = A``, ``B0 = B`` (saved, so a reload on the original model makes the
        same residual; ``save_adapter(..., convert_to_lora=True)`` writes a plain LoRA)."""
        module, config, targets = self._fresh_targets(adapter_name, "corda")
        if covariance is None:
            batches = "batches to collect each target's input covariance from"
            dataloader = require_dataloader(
                dataloader, adapter_name, "corda", batches, "covariance", "get_corda_covariance"
            )
            covariance = self.get_corda_covariance(adapter_name, dataloader, **pass_options)
        self._check_covers(
            covariance, targets, adapter_name, "covariance has no matrix", "get_corda_covariance"
        )
        factors = {}
        for t in targets:
            lora = self._target_layer(module, t)
            weight, _ = self._base_linear(*t.key)  # (d_out, d_in)
            require_float_weight(weight, "corda", t.path)
            cov = covariance[t.path].to(weight.device)
            factors[t.path] = corda_factors(weight, cov, t.r, lora.scaling, config.corda.corda_method)
        self._write_base_factors(module, targets, factors)
