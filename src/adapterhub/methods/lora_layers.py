"""LoRA's per-target modules: ``LoRALayer`` (a linear projection, or an ``nn.Embedding`` looked up by token ids)
and ``ConvLoRALayer`` (an ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d``, peft's ``_ConvNd`` LoRA). The math is in
each class; ``methods.lora`` builds them per target and composes them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import NamedModule
from adapterhub.methods.lora_init import draw_like_peft, orthogonal
from adapterhub.spec.configs import LoRAConfig
from adapterhub.spec.configs.low_rank import keeps_initial_factors


class LoRALayer(nn.Module):
    """The update of one projection: ``delta(x) = s · dropout(x) Aᵀ Bᵀ``, ``(..., d_in) -> (..., d_out)``.

    ``initialise=False`` (a module built only to receive saved weights: ``AdapterModule.build_for_load``) leaves
    ``A`` and ``B`` unset (``torch.empty``) instead of drawing them: every tensor it leaves unset is in its state
    dict, which the load then sets in full. Refused for base-modifying inits (their factors come from the base)."""

    initial_A: torch.Tensor  # PiSSA / OLoRA: the initial factors (buffers)
    initial_B: torch.Tensor

    def __init__(
        self,
        d_in: int,
        d_out: int,
        config: LoRAConfig,
        r: int | None = None,
        alpha: float | None = None,
        embedding: NamedModule | None = None,
        *,
        initialise: bool = True,
    ) -> None:
        super().__init__()
        if not initialise and getattr(config, "modifies_base", False):
            raise ConfigError(
                f"init={config.init!r} computes LoRA's factors from the base weights, so its layers cannot be "
                "built uninitialised; build them with initialise=True."
            )
        r = config.r if r is None else r  # rank_pattern / alpha_pattern give per-module values
        alpha = config.alpha if alpha is None else alpha
        self.lora_A = nn.Parameter(torch.empty(r, d_in))  # (r, d_in)
        # (d_out, r): zero (the update starts at zero) unless the load sets it
        self.lora_B = nn.Parameter(torch.zeros(d_out, r) if initialise else torch.empty(d_out, r))
        self.dropout = nn.Dropout(config.dropout)
        self.scaling = config.scaling_for(r, alpha)
        # an nn.Embedding target (peft's lora_embedding_A/B): the input is token ids, A is looked up by them
        self.embedding = embedding is not None
        self.padding_idx = embedding.padding_idx if embedding is not None else None
        if config.init not in ("lora", "gaussian") and embedding is not None:
            raise ConfigError(
                f"init={config.init!r} is implemented for linear targets only, not for the nn.Embedding target "
                f"{embedding.path}; use init='lora' or 'gaussian', or leave it out of target_modules."
            )
        with torch.no_grad():
            if not initialise:  # the load sets A and B
                pass
            elif self.embedding:  # as peft: A zero, B normal (still the identity at first)
                nn.init.zeros_(self.lora_A)
                nn.init.normal_(self.lora_B)
            elif config.init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / r)
            elif config.init == "orthogonal":  # B A = 0 (lora_init.orthogonal), peft's draws
                draw_like_peft(d_in, d_out, r)
                a, b = orthogonal(d_in, d_out, r)
                self.lora_A.copy_(a)
                self.lora_B.copy_(b)
            elif config.modifies_base:  # A, B and what leaves the base: set by init_from_base
                nn.init.zeros_(self.lora_A)
            else:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if keeps_initial_factors(config.init):
            # the initial factors (saved: the residual is W - s B0 A0, and the conversion to a plain LoRA needs them)
            self.register_buffer("initial_A", torch.zeros(r, d_in))  # (r, d_in)
            self.register_buffer("initial_B", torch.zeros(d_out, r))  # (d_out, r)
        # LoftQ: W - dequant(quant(W)) (d_out, d_in), not saved (recomputed from the base when loaded)
        self.base_offset: torch.Tensor | None = None

    def removed_from_base(self) -> torch.Tensor:
        """What a base-modifying init took out of the base weight: ``s B0 A0`` (PiSSA, OLoRA) or
        ``W - dequant(quant(W))`` (LoftQ), ``(d_out, d_in)``."""
        if self.base_offset is not None:
            return self.base_offset
        return (self.scaling * self.initial_B) @ self.initial_A  # as peft: (s B0) A0

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        z = self._down(x)  # (..., r)
        return (z @ self.lora_B.t()) * self.scaling  # (..., d_out)

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding:  # x: token ids (...); no dropout on ids (as peft)
            return F.embedding(x, self.lora_A.t(), padding_idx=self.padding_idx)  # (..., r)
        if self.dropout.p > 0:
            x = self.dropout(x)
        return x @ self.lora_A.t()  # (..., r)

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y + delta(x)`` with the up-projection, scaling and addition in one ``addmm`` (one pass over ``y``
        instead of three): ``(..., d_out)``."""
        z = self._down(x)  # (..., r)
        out = torch.addmm(
            y.reshape(-1, y.shape[-1]), z.reshape(-1, z.shape[-1]), self.lora_B.t(), alpha=self.scaling
        )
        return out.view(y.shape)

    def weight_delta(self) -> torch.Tensor:
        """``s · B A``: ``(d_out, d_in)``."""
        return (self.lora_B @ self.lora_A) * self.scaling


class ConvLoRALayer(LoRALayer):
    """The update of an ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` (peft's ``_ConvNd`` LoRA): ``lora_A`` a
    convolution ``(r, c_in, *kernel)`` with the base's kernel, stride and padding, ``lora_B`` a pointwise
    convolution ``(c_out, r / groups, 1, ...)`` grouped as the module; ``delta(x) = s · B(A(dropout(x)))``, ``(N, c_in, *spatial) -> (N, c_out,
    *spatial')`` (1, 2 or 3 spatial dimensions, as many as the kernel has)."""

    def __init__(
        self,
        module: NamedModule,
        config: LoRAConfig,
        r: int | None = None,
        alpha: float | None = None,
        *,
        initialise: bool = True,
    ) -> None:
        if config.init not in ("lora", "gaussian"):
            raise ConfigError(
                f"init={config.init!r} is implemented for linear targets only, not for the nn.{module.type_name} "
                f"target {module.path}; use init='lora' or 'gaussian', or leave it out of target_modules."
            )
        super().__init__(module.d_in, module.d_out, config, r, alpha, initialise=initialise)
        kernel, self.stride, self.padding = module.conv  # type: ignore[misc]
        self.conv_fn = _CONV_FN[len(kernel)]  # F.conv1d / conv2d / conv3d
        r = self.lora_A.shape[0]
        a = torch.empty(r, module.d_in, *kernel)  # (r, c_in, *kernel)
        if initialise:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            if config.init == "gaussian":
                nn.init.normal_(a, std=1.0 / r)
        self.lora_A = nn.Parameter(a)
        # grouped as the module (peft): (c_out, r / groups, 1, ...); zero unless the load sets it
        self.groups = module.groups
        shape_b = (module.d_out, r // self.groups, *(1,) * len(kernel))
        self.lora_B = nn.Parameter(torch.zeros(shape_b) if initialise else torch.empty(shape_b))

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout.p > 0:
            x = self.dropout(x)
        return self.conv_fn(x, self.lora_A, stride=self.stride, padding=self.padding)  # (N, r, *spatial')

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        up = self.conv_fn(self._down(x), self.lora_B, groups=self.groups)  # (N, c_out, *spatial')
        return up * self.scaling

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y + self.delta(x)

    def weight_delta(self) -> torch.Tensor:
        """``s · B ∘ A`` as one kernel: ``(c_out, c_in, *kernel)`` (peft's ``get_delta_weight``: ``A`` convolved
        with ``B`` over the channel axes swapped). Raises for a grouped convolution (peft cannot merge one either)."""
        self.check_mergeable()
        return self.conv_fn(self.lora_A.transpose(0, 1), self.lora_B).transpose(0, 1) * self.scaling

    def check_mergeable(self) -> None:
        """Raise for a grouped convolution, whose update is no single weight change."""
        if self.groups > 1:
            raise ConfigError(
                f"LoRA on a convolution with groups={self.groups} has no single weight update (its lora_B is "
                "grouped), so it cannot be merged (peft cannot either); keep the adapter unmerged."
            )


_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # number of spatial dimensions -> convolution
