"""AdaLoRA (Zhang et al. 2023; peft's ``AdaLoraModel``, peft 0.21): LoRA in SVD form whose ranks a rank allocator
lowers during training.

For a projection ``y = W x + b`` with ``W: (d_out, d_in)``::

    y' = y + s · B ((A dropout(x)) ⊙ E)        A: (r, d_in)  E: (r, 1)  B: (d_out, r)   s = alpha / (init_r + 1e-5)

(peft: ``scaling / ranknum`` with ``ranknum = init_r``, kept when peft resizes a loaded adapter). A new adapter has
``A, B ~ N(0, 0.02²)`` and ``E = 0`` (the identity), as peft. ``ΔW = s · B (A ⊙ E)`` is a change of weights, so
``merge_adapter`` folds it into ``W``.

Training asks the method twice per step (the method protocol, ``AdapterModule``):

- ``training_loss``: ``orth_reg_weight · mean over every A and B of ‖P Pᵀ - I‖_F`` (``A Aᵀ``, ``Bᵀ B``: ``(r, r)``),
  added to each batch's loss (peft adds it in ``AdaLoraModel.forward`` whenever the output has a loss);
- ``after_optimizer_step``: peft's ``update_and_allocate`` (``adapterhub.methods.adalora_allocator``); the
  allocator's result becomes the adapter's ``config.rank_pattern`` (saved with it).

Weights keep all ``init_r`` rows here, the dropped singular values as zeros in ``E``; peft's files hold only the
kept rows (``adapterhub.io.peft_adalora`` converts). Targets, ``modules_to_save`` and composition are LoRA's
(``nn.Linear`` / ``Conv1D`` targets only; Fuse does not apply); a BatchSplit runs its row blocks one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.adalora_allocator import RankAllocator, apply_masks, budget_schedule
from adapterhub.methods.base import MODULE_LAYER, ModelDims, NamedModule, register_method
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.spec.configs import AdaLoraConfig


class SVDLayer(LoRALayer):
    """The update of one projection: ``delta(x) = s · ((dropout(x) Aᵀ) ⊙ Eᵀ) Bᵀ``, ``(..., d_in) -> (..., d_out)``."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        config: AdaLoraConfig,  # type: ignore[override]
        r: int | None = None,
        alpha: float | None = None,
        embedding: NamedModule | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if embedding is not None:
            raise ConfigError(
                "AdaLoRA adapts nn.Linear and Conv1D modules only (as peft); leave embeddings out."
            )
        r = (
            config.init_r
        )  # the per-module r / alpha LoRA's targeting hands in do not apply: peft builds every
        # AdaLoRA module with init_r and lora_alpha
        self.lora_A = nn.Parameter(torch.empty(r, d_in))  # (r, d_in)
        self.lora_E = nn.Parameter(torch.zeros(r, 1))  # (r, 1)
        self.lora_B = nn.Parameter(torch.empty(d_out, r))  # (d_out, r)
        self.dropout = nn.Dropout(config.dropout)
        self.scaling = config.scaling
        self.embedding = False
        self.padding_idx = None
        with torch.no_grad():
            nn.init.normal_(self.lora_A, mean=0.0, std=0.02)
            nn.init.normal_(self.lora_B, mean=0.0, std=0.02)

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout.p > 0:
            x = self.dropout(x)
        return x @ (self.lora_A * self.lora_E).t()  # (..., r)

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y + self.delta(x).to(y.dtype)

    def weight_delta(self) -> torch.Tensor:
        """``s · B (A ⊙ E)``: ``(d_out, d_in)``."""
        return (self.lora_B @ (self.lora_A * self.lora_E)) * self.scaling

    def orthogonality(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(‖A Aᵀ - I‖_F, ‖Bᵀ B - I‖_F)``."""
        eye = torch.eye(self.lora_A.shape[0], dtype=self.lora_A.dtype, device=self.lora_A.device)  # (r, r)
        a = torch.linalg.matrix_norm(self.lora_A @ self.lora_A.t() - eye)
        b = torch.linalg.matrix_norm(self.lora_B.t() @ self.lora_B - eye)
        return a, b


@register_method("adalora")
class AdaLoraAdapter(LoRAAdapter):
    """LoRA's adapter (targets by spec point or by module name) with an ``SVDLayer`` per target, its orthogonal
    regulariser and its rank allocator."""

    config_cls = AdaLoraConfig  # type: ignore[assignment]
    config: AdaLoraConfig  # type: ignore[assignment]
    layer_class: ClassVar[type[LoRALayer]] = SVDLayer
    average_refusal: ClassVar[str | None] = (
        "AdaLoRA adapters have no weighted combination (peft's add_weighted_adapter refuses them too: a sum of "
        "their SVD factors is not the sum of their updates, and their rank patterns differ). Merge them one by "
        "one with model.merge_adapter, or combine LoRA adapters."
    )

    def __init__(self, name: str, config: AdaLoraConfig, dims: ModelDims) -> None:  # type: ignore[override]
        super().__init__(name, config, dims)  # type: ignore[arg-type]
        if any(site.embedding or not isinstance(site, SVDLayer) for _, _, site in self.lora_targets()):
            raise ConfigError(
                "AdaLoRA adapts nn.Linear and Conv1D modules only (as peft); leave embeddings and convolutions "
                "out of target_modules."
            )
        self.allocator = RankAllocator()
        if config.rank_pattern is not None:
            self.config = config.replace(rank_pattern=self._adopt_pattern(config.rank_pattern))

    def target_key(self, layer: int, point: str) -> str:
        """A target's name in ``rank_pattern``: its module path when targeted by name, else
        ``layers.<i>.<point>``."""
        if layer == MODULE_LAYER:
            return point
        return self._paths.get((layer, point), f"layers.{layer}.{point}")

    def sites(self) -> dict[str, SVDLayer]:
        """``{target key: SVDLayer}`` of every target."""
        return {self.target_key(layer, point): site for layer, point, site in self.lora_targets()}  # type: ignore[misc]

    def _adopt_pattern(self, pattern: tuple[tuple[str, tuple[bool, ...]], ...]) -> dict[str, list[bool]]:
        """``rank_pattern`` with each key a target of this adapter: a module path saved from another root of the
        same model (peft's file of a model with a head) is matched as a dotted suffix either way, when that picks
        one target; every target must have one entry."""
        keys = set(self.sites())
        out: dict[str, list[bool]] = {}
        unknown = []
        for key, mask in pattern:
            near = [k for k in keys if k == key or k.endswith(f".{key}") or key.endswith(f".{k}")]
            if len(near) == 1:
                out[near[0]] = list(mask)
            else:
                unknown.append(key)
        missing = sorted(keys - set(out))
        if unknown or missing:
            raise ConfigError(
                f"AdaLoRA's rank_pattern must name each target once: {unknown or 'none'} are not targets, "
                f"{missing or 'none'} have no entry (targets: {sorted(keys)})."
            )
        return out

    # ---- the training protocol
    def training_loss(self) -> torch.Tensor | None:
        """``orth_reg_weight · mean(‖A Aᵀ - I‖_F, ‖Bᵀ B - I‖_F over every target)``; None when the weight is 0."""
        if self.config.orth_reg_weight == 0:
            return None
        norms = [norm for site in self.sites().values() for norm in site.orthogonality()]
        return self.config.orth_reg_weight * (torch.stack(norms).sum() / len(norms))

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """peft's ``update_and_allocate`` after optimizer step ``step`` (1-based) of ``total_steps`` (the config's
        ``total_step`` wins when set): before ``T - tfinal`` fold the step's importance in and mask on schedule; at
        ``T - tfinal`` mask to the target budget and clear the allocator; after it, re-apply the final masks."""
        if self.config.total_step is None:  # the run's length, kept with the adapter (peft's files need it)
            self.config = self.config.replace(total_step=total_steps)
        config = self.config
        total = config.total_step
        assert total is not None
        config.check_trainable(total)
        sites = self.sites()
        final = total - config.tfinal
        if step < final:
            self.allocator.update(sites, config)
            budget, mask_now = budget_schedule(config, step, total, len(sites))
            if mask_now:
                self._set_pattern(self.allocator.mask_to_budget(sites, budget))
        elif step == final:
            self._set_pattern(self.allocator.mask_to_budget(sites, config.target_r * len(sites)))
            self.allocator.reset()
        else:
            if config.rank_pattern is None:
                raise ConfigError(
                    f"AdaLoRA adapter {self.adapter_name!r} is past its final masking (step {step} > {final}) but "
                    "has no rank_pattern; train it from step 1, or set total_step to this run's length."
                )
            apply_masks(sites, dict(config.rank_pattern))

    def _set_pattern(self, kept: dict[str, tuple[bool, ...]]) -> None:
        """The allocator's masks become the adapter's ``config.rank_pattern`` (what is saved with it)."""
        self.config = self.config.replace(rank_pattern={k: list(v) for k, v in kept.items()})

    def merged_deltas(self) -> Iterator[tuple[int, str, torch.Tensor]]:
        for layer, point, site in self.lora_targets():
            yield layer, point, site.weight_delta()

    def batch_split_grouped(self, *args: Any, **kwargs: Any) -> torch.Tensor | None:
        """None: the interpreter runs a BatchSplit's row blocks one by one."""
        return None
