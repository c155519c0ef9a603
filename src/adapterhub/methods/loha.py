"""LoHa (Hyeon-Woo et al. 2022, FedPara; peft's ``LoHaModel``): a low-rank Hadamard-product update of linear
projections.

For a projection ``y = W x + b`` with ``W: (d_out, d_in)``::

    ΔW = s · (W1a W1b) ⊙ (W2a W2b)        W1a, W2a: (d_out, r)   W1b, W2b: (r, d_in)   s = alpha / r
    y' = y + ΔW x

The element-wise product of two rank-``r`` matrices has rank up to ``r²`` with ``2 r (d_in + d_out)`` parameters.
A new adapter (``init_weights=True``) has ``W2b = 0`` and the other factors Kaiming-uniform (``a = sqrt(5)``), so it
is the identity; ``init_weights=False`` draws ``W2b`` too. Parameter names are peft's (``hada_w1_a`` ...), so its
files map one to one. On an ``nn.Conv2d`` / ``nn.Conv1d`` the factors cover the flattened kernel, or, with
``use_effective_conv2d`` and a kernel larger than 1×1 / 1, each operand is a CP-decomposed kernel
(``LoHaConvLayer``).
Dropouts, composition and merging: ``methods.lycoris``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.methods.base import NamedModule, register_method
from adapterhub.methods.lora import ConvLoRALayer, LoRALayer
from adapterhub.methods.lycoris import LycorisAdapter, LycorisLayer, cp_kernel
from adapterhub.spec.configs import LoHaConfig


class LoHaLayer(LycorisLayer):
    """The four factors of one projection; ``weight_delta() = s · (W1a W1b) ⊙ (W2a W2b)``, ``(d_out, d_in)``."""

    rescale_rank_dropout = True  # peft's LoHa always divides the kept rows by their share

    def __init__(
        self,
        d_in: int,
        d_out: int,
        config: LoHaConfig,
        r: int | None = None,
        alpha: float | None = None,
        conv: tuple[Any, Any, Any] | None = None,
    ) -> None:
        super().__init__(d_in, d_out, config, r, alpha, conv)
        r = self.r
        if (
            self.effective
        ):  # CP factors of the kernel: mode factors (r, c_out) / (r, c_in), cores (r, r, kh, kw)
            self.hada_w1_a = nn.Parameter(torch.empty(r, d_out))  # (r, c_out)
            self.hada_w1_b = nn.Parameter(torch.empty(r, d_in))  # (r, c_in)
            self.hada_w2_a = nn.Parameter(torch.empty(r, d_out))  # (r, c_out)
            self.hada_w2_b = nn.Parameter(torch.empty(r, d_in))  # (r, c_in)
            self.hada_t1 = nn.Parameter(torch.empty(r, r, *self.core_kernel))  # (r, r, kh, kw) / (r, r, k, 1)
            self.hada_t2 = nn.Parameter(torch.empty(r, r, *self.core_kernel))  # (r, r, kh, kw) / (r, r, k, 1)
        else:
            d_in = d_in * math.prod(
                self.kernel
            )  # a convolution: the flattened kernel (c_in·kh·kw / c_in·k), as peft
            self.hada_w1_a = nn.Parameter(torch.empty(d_out, r))  # (d_out, r)
            self.hada_w1_b = nn.Parameter(torch.empty(r, d_in))  # (r, d_in)
            self.hada_w2_a = nn.Parameter(torch.empty(d_out, r))  # (d_out, r)
            self.hada_w2_b = nn.Parameter(torch.empty(r, d_in))  # (r, d_in)
        with torch.no_grad():
            for factor in self.parameters():
                nn.init.kaiming_uniform_(factor, a=math.sqrt(5))
            if config.init_weights:
                nn.init.zeros_(self.hada_w2_b)

    @classmethod
    def shape_from(cls, params: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
        if "hada_w1_a" not in params or "hada_w1_b" not in params:
            return None
        if "hada_t1" in params:  # CP: (r, c_out), (r, c_in)
            return int(params["hada_w1_b"].shape[1]), int(params["hada_w1_a"].shape[1])
        return int(params["hada_w1_b"].shape[1]), int(params["hada_w1_a"].shape[0])

    @classmethod
    def conv_shape_from(cls, params: Mapping[str, torch.Tensor]) -> tuple[int, int, tuple[int, ...]] | None:
        """The CP core ``hada_t1 (r, r, kh, kw)`` with ``hada_w1_a (r, c_out)``, ``hada_w1_b (r, c_in)``:
        ``(c_in, c_out, (kh, kw))`` (a Conv1d's core ``(r, r, k, 1)`` reads as kernel ``(k, 1)``: the files do not
        tell them apart, and the update is the same); the flattened kernel does not say it (None)."""
        core, shape = params.get("hada_t1"), cls.shape_from(params)
        if core is None or core.dim() != 4 or shape is None:
            return None
        return shape[0], shape[1], (int(core.shape[2]), int(core.shape[3]))

    def _product(self) -> torch.Tensor:
        if self.effective:
            first = cp_kernel(
                self.hada_t1, self.hada_w1_a, self.hada_w1_b
            )  # (c_out, c_in, kh, kw) / (.., k, 1)
            return first * cp_kernel(self.hada_t2, self.hada_w2_a, self.hada_w2_b)
        first = self.hada_w1_a @ self.hada_w1_b  # (d_out, d_in)
        second = self.hada_w2_a @ self.hada_w2_b  # (d_out, d_in)
        return first * second


class LoHaConvLayer(LoHaLayer):
    """LoHa on an ``nn.Conv2d`` / ``nn.Conv1d``: with ``use_effective_conv2d=False`` (or a 1×1 / 1 kernel) the
    factors over the flattened kernel, ``ΔW = s · (W1a W1b) ⊙ (W2a W2b)`` reshaped to ``(c_out, c_in, kh, kw)`` /
    ``(c_out, c_in, k)``; with it, each Hadamard operand is a CP-decomposed kernel, ``ΔW = s · cp(T1, W1a, W1b) ⊙
    cp(T2, W2a, W2b)`` (``cp_kernel``: ``T (r, r, kh, kw)``, or ``(r, r, k, 1)`` for a Conv1d as peft's,
    ``Wa (r, c_out)``, ``Wb (r, c_in)``), reshaped to the weight's shape."""

    def __init__(
        self, module: NamedModule, config: LoHaConfig, r: int | None = None, alpha: float | None = None
    ) -> None:
        super().__init__(module.d_in, module.d_out, config, r, alpha, conv=module.conv)


@register_method("loha")
class LoHaAdapter(LycorisAdapter):
    """LoHa over all layers: ``layers[str(i)][point]`` (or ``by_name[...]``) is a ``LoHaLayer`` per target."""

    config_cls = LoHaConfig  # type: ignore[assignment]
    config: LoHaConfig  # type: ignore[assignment]
    layer_class: ClassVar[type[LoRALayer]] = LoHaLayer  # type: ignore[assignment]
    conv_layer_class: ClassVar[type[ConvLoRALayer]] = LoHaConvLayer  # type: ignore[assignment]
