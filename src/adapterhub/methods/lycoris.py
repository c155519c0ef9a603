"""What LoHa and LoKr share (the LyCORIS family as peft 0.21 runs it): an update ``ΔW (d_out, d_in)`` built from
factors and applied as a delta on the projection's output::

    y' = y + dropout_rows(ΔW) x          (training: skipped with probability module_dropout)

``dropout_rows`` (training, ``rank_dropout > 0``): each output row of ``ΔW`` is kept with probability
``1 - rank_dropout`` (one draw per row per call), and the kept ones are multiplied by ``1 / mean(kept)`` where the
method rescales (LoHa always, LoKr with ``rank_dropout_scale``), as peft. ``module_dropout`` (training): one draw
``u ~ U(0, 1)`` per projection and call; the update is added only when ``u > module_dropout``. In eval both are off.

The adapter is LoRA's (``LoRAAdapter``: the same targets, by spec point or by module name, ``modules_to_save``,
composition) with a LyCORIS layer per target; merging folds ``ΔW`` into ``W`` (``merged_deltas``). A BatchSplit of
adapters of one method whose updates have one shape runs as one batched product (each row block through its own
``ΔW``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub.methods.base import AdapterModule, LinearInputs, Point, PointInputs
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.spec.configs import LycorisConfig

_KEY = re.compile(r"^layers\.(\d+)\.([a-z_]+)\.([a-z0-9_]+)$")


def factors_by_point(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{point: {param: tensor}}`` of saved ``layers.<i>.<point>.<param>`` weights (one layer's targets)."""
    by_point: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match:
            by_point.setdefault(match.group(2), {})[match.group(3)] = tensor
    return by_point


def cp_kernel(core: torch.Tensor, out_mode: torch.Tensor, in_mode: torch.Tensor) -> torch.Tensor:
    """A convolution kernel from its CP / Tucker factors (peft's ``use_effective_conv2d``)::

        K[p, q, k, l] = Σ_i Σ_j core[i, j, k, l] · out_mode[i, p] · in_mode[j, q]

    ``core (r, r, kh, kw)``, ``out_mode (r, n_out)``, ``in_mode (r, n_in)`` -> ``(n_out, n_in, kh, kw)``."""
    return torch.einsum("ijkl,ip,jq->pqkl", core, out_mode, in_mode)


class LycorisLayer(nn.Module):
    """The update of one projection of shape ``(d_out, d_in)``, or of an ``nn.Conv2d`` / ``nn.Conv1d`` (``conv``: its
    kernel size, stride and padding; ``d_in`` / ``d_out`` its channels) of shape ``(c_out, c_in, kh, kw)`` /
    ``(c_out, c_in, k)``: subclasses build the factors' product in ``_product`` (any shape with the weight's number
    of entries, rows = outputs); ``delta(x) = ΔW x`` (a convolution with ``ΔW`` for a convolution; the dropouts
    above while training). ``r`` / ``alpha`` override the config's (``rank_pattern`` / ``alpha_pattern``).
    ``effective``: the config's ``use_effective_conv2d`` on a convolution whose kernel is not 1×1 / 1 (peft turns it
    off there, and applies the same flag to Conv1d): the subclass keeps the kernel's CP factors (``cp_kernel``, over
    the 2-d ``core_kernel``: ``(kh, kw)``, or ``(k, 1)`` for a Conv1d as peft stores it) instead of factors over the
    flattened kernel."""

    rescale_rank_dropout: bool = True

    def __init__(
        self,
        d_in: int,
        d_out: int,
        config: LycorisConfig,
        r: int | None = None,
        alpha: float | None = None,
        conv: tuple[Any, Any, Any] | None = None,
    ) -> None:
        super().__init__()
        self.r = config.r if r is None else r
        alpha = config.alpha if alpha is None else alpha
        self.scaling = config.scaling_for(self.r, alpha)
        self.d_in, self.d_out = d_in, d_out
        self.rank_dropout = config.rank_dropout
        self.module_dropout = config.module_dropout
        self.conv = conv
        self.kernel: tuple[int, ...] = tuple(conv[0]) if conv is not None else ()
        self.weight_shape = (d_out, d_in, *self.kernel)  # the base module's weight
        # the CP core's kernel dimensions: peft keeps a Conv1d's (k,) as (k, 1), cores (r, r, k, 1)
        self.core_kernel: tuple[int, ...] = (*self.kernel, 1) if len(self.kernel) == 1 else self.kernel
        # peft's use_effective_conv2d on a kernel larger than 1x1: the kernel's factors are CP-decomposed (cp_kernel)
        self.effective = bool(config.use_effective_conv2d) and any(k != 1 for k in self.kernel)

    @classmethod
    def shape_from(cls, params: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
        """``(d_in, d_out)`` that a target's saved factors imply, or None when they are incomplete."""
        raise NotImplementedError

    @classmethod
    def conv_shape_from(cls, params: Mapping[str, torch.Tensor]) -> tuple[int, int, tuple[int, ...]] | None:
        """``(c_in, c_out, kernel)`` when a target's saved factors say it is a convolution, else None."""
        return None

    def _product(self) -> torch.Tensor:
        """The factors' product without the scaling (``d_out`` rows)."""
        raise NotImplementedError

    def weight_delta(self) -> torch.Tensor:
        """``ΔW`` with the scaling ``alpha / r`` in the base weight's shape: ``(d_out, d_in)`` or
        ``(c_out, c_in, kh, kw)`` / ``(c_out, c_in, k)``."""
        return (self._product() * self.scaling).reshape(self.weight_shape)

    def _call_weight(self) -> torch.Tensor:
        """``ΔW`` for this call: rows dropped (and rescaled) while training with ``rank_dropout``."""
        weight = self.weight_delta()  # (d_out, d_in[, kh, kw] / [, k])
        if self.training and self.rank_dropout > 0:
            keep = (torch.rand(weight.shape[0]) > self.rank_dropout).to(weight.dtype)  # (d_out,)
            if self.rescale_rank_dropout:
                keep = keep / keep.mean()
            weight = weight * keep.to(weight.device).view(-1, *[1] * (weight.dim() - 1))
        return weight

    def skipped(self) -> bool:
        """Whether ``module_dropout`` skips the update in this call: training draws ``u ~ U(0, 1)`` on every call
        (as peft, so the random stream matches) and skips unless ``u > module_dropout``."""
        return self.training and not torch.rand(1).item() > self.module_dropout

    def _run(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:  # (N, c_in, H, W) -> (N, c_out, H', W'), or (N, c_in, L) -> (N, c_out, L')
            conv = F.conv1d if len(self.kernel) == 1 else F.conv2d
            return conv(x.to(weight.dtype), weight, stride=self.conv[1], padding=self.conv[2])
        return F.linear(x.to(weight.dtype), weight)  # (..., d_in) -> (..., d_out)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``ΔW x`` (zero when ``module_dropout`` skips it)."""
        if self.skipped():
            return torch.zeros_like(self._run(x, self.weight_delta().detach()))
        return self._run(x, self._call_weight()).to(x.dtype)

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y + ΔW x``; ``y`` unchanged when ``module_dropout`` skips the update."""
        if self.skipped():
            return y
        return y + self._run(x, self._call_weight()).to(y.dtype)


class LycorisAdapter(LoRAAdapter):
    """LoRA's adapter (targets, ``modules_to_save``, composition, merging) with a ``LycorisLayer`` per target;
    subclasses set ``layer_class``."""

    config: LycorisConfig  # type: ignore[assignment]
    layer_class: ClassVar[type[LoRALayer]]
    # a Conv1d's flattened kernel (c_in·k) does not say c_in nor k either, and its CP core (r, r, k, 1) reads as a
    # Conv2d's: the files record both kinds (conv_modules)
    declared_conv_dims: ClassVar[tuple[int, ...]] = (1, 2)

    @classmethod
    def linear_shapes_from(cls, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, int, int], ...]:
        """The ``(point, d_in, d_out)`` that saved factors imply (to validate files without a model)."""
        by_point = factors_by_point(tensors)
        layer: Any = cls.layer_class
        shapes = ((point, layer.shape_from(params)) for point, params in by_point.items())
        return tuple((point, shape[0], shape[1]) for point, shape in shapes if shape is not None)

    @classmethod
    def conv_shapes_from(
        cls, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[tuple[str, int, int, tuple[int, ...]], ...]:
        """``(point, c_in, c_out, kernel)`` of the convolution targets whose saved factors say so (the layer
        class's ``conv_shape_from``: LoKr's full ``lokr_w2 (b, d, kh, kw)`` or ``(b, d, k)`` (a Conv1d), the CP
        cores ``hada_t1`` / ``lokr_t2`` ``(r, r, kh, kw)`` (a Conv1d's ``(r, r, k, 1)`` reads as a Conv2d of kernel
        ``(k, 1)``, the same update); a flattened kernel never does)."""
        by_point = factors_by_point(tensors)
        layer: Any = cls.layer_class
        shapes = ((point, layer.conv_shape_from(params)) for point, params in by_point.items())
        return tuple((point, *shape) for point, shape in shapes if shape is not None)

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        """Row block ``k`` through adapter ``k``'s ``ΔW`` in one batched product. Needs adapters of this method
        whose updates have one shape, and no training-time dropout (its draws are per block); else None (the
        interpreter runs the row blocks one by one)."""
        if not all(type(m) is type(self) for m in modules) or not isinstance(inputs, LinearInputs):
            return None
        layers: list[LycorisLayer] = [m.layer_at(layer, point) for m in modules]  # type: ignore[attr-defined,operator]
        if any(
            site.conv is not None or (site.training and (site.rank_dropout or site.module_dropout))
            for site in layers
        ):
            return None
        x, y = inputs.x, inputs.y  # (B, T, d_in), (B, T, d_out)
        if x.dim() < 2:
            return None
        weights = torch.stack([site.weight_delta() for site in layers]).to(x.dtype)  # (K, d_out, d_in)
        if len(set(sizes)) == 1:
            groups = x.reshape(len(layers), -1, x.shape[-1])  # (K, rows·T, d_in)
        else:
            owner = torch.repeat_interleave(
                torch.arange(len(layers), device=x.device), torch.tensor(list(sizes), device=x.device)
            )  # (B,)
            weights = weights[owner]  # (B, d_out, d_in)
            groups = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, d_in)
        delta = torch.bmm(groups, weights.transpose(1, 2))  # (G, rows, d_out)
        return y + delta.reshape(y.shape)
