"""Model API for LoRA-GA (``init="lora_ga"``): ``model.get_lora_ga_gradients`` runs the data pass,
``model.initialize_lora_ga`` also turns each target's gradient into ``A``, ``B`` and the residual base (peft 0.21.2's
``preprocess_loraga`` followed by ``get_peft_model``, with the adapter added first and its name given).

The pass puts the model in training mode, lets only the targets' weights require grad, and for each batch runs
``loss_fn(model, batch)`` (default ``model(**batch).loss``) with no adapter active and calls ``backward`` on the
loss; each target's gradient is the sum over the batches divided by the number of forward calls through it (the
count of peft's backward hook). ``requires_grad``, the weights' earlier ``.grad`` and the training mode are put back
afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from adapterhub.api.data_pass import (
    DataPassMixin,
    DataTarget,
    check_not_empty,
    refuse_missing,
    require_dataloader,
    to_device,
)
from adapterhub.errors import ConfigError
from adapterhub.methods.lora_ga import lora_ga_factors
from adapterhub.methods.lora_init import draw_like_peft, require_float_weight
from adapterhub.runtime.modules import is_transposed


def model_loss(model: Any, batch: Any) -> Any:
    """The default ``loss_fn``: ``model(**batch).loss``."""
    return model(**batch).loss


class LoraGAMixin(DataPassMixin):
    """``get_lora_ga_gradients`` / ``initialize_lora_ga``, mixed into the model by ``adapterhub.init``."""

    def get_lora_ga_gradients(
        self,
        adapter_name: str,
        dataloader: Iterable[Any],
        *,
        loss_fn: Callable[[Any, Any], Any] | None = model_loss,
    ) -> dict[str, torch.Tensor]:
        """LoRA-GA's data pass for adapter ``adapter_name`` (``init="lora_ga"``): ``{module path: G (d_out, d_in)}``,
        each target's weight gradient averaged over its forward calls (what peft's ``preprocess_loraga`` attaches
        as ``_peft_loraga_grad``, transposed for a ``Conv1D``; ``initialize_lora_ga(gradients=...)`` takes it)."""
        _, _, targets = self._fresh_targets(adapter_name, "lora_ga")
        check_not_empty(dataloader, "LoRA-GA")
        loss_of = loss_fn or model_loss
        modules = {t.path: self._module().get_submodule(t.path) for t in targets}
        weights: dict[str, torch.Tensor] = {path: m.weight for path, m in modules.items()}  # type: ignore[misc]
        counts = dict.fromkeys(modules, 0)

        def count(target: DataTarget, x: torch.Tensor) -> None:
            counts[target.path] += 1

        observer = self._observer_for(targets, count)
        params = list(self.parameters())  # type: ignore[attr-defined]
        requires = [p.requires_grad for p in params]
        earlier = {path: w.grad for path, w in weights.items()}
        training = self.training  # type: ignore[attr-defined]
        device = params[0].device
        try:
            for p in params:
                p.requires_grad_(False)
            for w in weights.values():
                w.grad = None
                w.requires_grad_(True)
            self.train()  # type: ignore[attr-defined]
            with torch.enable_grad():
                for batch in dataloader:
                    loss = self._observed_forward(observer, loss_of, to_device(batch, device))
                    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                        raise ConfigError(
                            "LoRA-GA needs a loss to differentiate: loss_fn(model, batch) (default "
                            "model(**batch).loss) gave "
                            f"{type(loss).__name__ if not isinstance(loss, torch.Tensor) else 'a tensor without grad'}"
                            "; give batches with labels on a model with a head, or pass loss_fn."
                        )
                    loss.backward()
            grads = {path: w.grad for path, w in weights.items()}
        finally:
            for p, flag in zip(params, requires):
                p.requires_grad_(flag)
            for path, w in weights.items():
                w.grad = earlier[path]
            self.train(training)  # type: ignore[attr-defined]
        missing = [path for path, n in counts.items() if n == 0 or grads[path] is None]
        refuse_missing(
            missing,
            adapter_name,
            "LoRA-GA's passes gave no gradient to",
            ": the loss must run through them (check the batches and loss_fn).",
        )
        out = {}
        for path, grad in grads.items():
            assert grad is not None
            grad = grad.t() if is_transposed(modules[path]) else grad  # (d_out, d_in)
            out[path] = grad / counts[path]
        return out

    @torch.no_grad()
    def initialize_lora_ga(
        self,
        adapter_name: str,
        dataloader: Iterable[Any] | None = None,
        *,
        gradients: Mapping[str, torch.Tensor] | None = None,
        **pass_options: Any,
    ) -> None:
        """Initialise ``init="lora_ga"`` adapter ``adapter_name`` from data (``get_lora_ga_gradients(adapter_name,
        dataloader, **pass_options)``) or from given ``gradients`` (``{module path: G (d_out, d_in)}``): per target
        in module order, ``A``, ``B`` from the SVD of ``G`` (``lora_ga_config``'s ``direction`` / ``scale`` /
        ``stable_gamma``; the randomised SVD draws from the global generator in peft's order, so equal seeds give
        equal factors) and the base becomes ``W - s B A``; the adapter keeps ``A0 = A``, ``B0 = B`` (saved, so a
        reload on the original model makes the same residual; ``save_adapter(..., convert_to_lora=True)`` writes a
        plain LoRA)."""
        module, config, targets = self._fresh_targets(adapter_name, "lora_ga")
        if gradients is None:
            batches = "batches with labels whose loss gradients it averages"
            dataloader = require_dataloader(
                dataloader, adapter_name, "lora_ga", batches, "gradients", "get_lora_ga_gradients"
            )
            gradients = self.get_lora_ga_gradients(adapter_name, dataloader, **pass_options)
        self._check_covers(
            gradients, targets, adapter_name, "gradients has no matrix", "get_lora_ga_gradients"
        )
        factors = {}
        for t in targets:
            lora = self._target_layer(module, t)
            weight, _ = self._base_linear(*t.key)  # (d_out, d_in)
            require_float_weight(weight, "lora_ga", t.path)
            d_out, d_in = weight.shape
            draw_like_peft(d_in, d_out, t.r)  # peft builds the layer's two Linears first
            stored: torch.Tensor = self._module().get_submodule(t.path).weight  # type: ignore[assignment]
            factors[t.path] = lora_ga_factors(
                gradients[t.path].to(weight.device),
                weight,
                t.r,
                lora.scaling,
                config.lora_ga,
                int(stored.shape[0]),
                weight.dtype,
            )
        self._write_base_factors(module, targets, factors)
