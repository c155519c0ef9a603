"""LoKr (Yeh et al. 2024, LyCORIS; peft's ``LoKrModel``): a Kronecker-product update of linear projections.

For a projection ``y = W x + b`` with ``W: (d_out, d_in)``, ``d_out = a·b`` and ``d_in = c·d`` (``factorization``)::

    ΔW = s · W1 ⊗ W2        W1: (a, c)   W2: (b, d)   s = alpha / r
    y' = y + ΔW x

``W2`` is the product ``W2a W2b`` (``(b, r)``, ``(r, d)``) when ``r < max(b, d) / 2``, else one full matrix (on an
``nn.Conv2d`` with ``use_effective_conv2d`` and a kernel larger than 1×1 the product is a CP-decomposed kernel,
``LoKrConvLayer``);
``W1`` is full unless ``decompose_both`` and ``r < max(a, c) / 2`` (then ``W1a W1b``). Initialisation (peft's):
``init_weights=True`` zeroes ``W1`` (or ``W1a``), ``"lycoris"`` zeroes ``W2`` (or ``W2b``), ``False`` zeroes
nothing; the other factors are Kaiming-uniform (``a = sqrt(5)``). Parameter names are peft's (``lokr_w1`` ...).
Dropouts (``rank_dropout_scale``: rescale the kept rows), composition and merging: ``methods.lycoris``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.methods.base import NamedModule, register_method
from adapterhub.methods.lora import ConvLoRALayer, LoRALayer
from adapterhub.methods.lycoris import LycorisAdapter, LycorisLayer, cp_kernel, factors_by_point
from adapterhub.spec.configs import LoKrConfig, MethodConfig
from adapterhub.spec.factor_shapes import factorization

__all__ = ["LoKrAdapter", "LoKrConvLayer", "LoKrLayer", "factorization"]


class LoKrLayer(LycorisLayer):
    """The Kronecker factors of one projection; ``weight_delta() = s · W1 ⊗ W2``, ``(d_out, d_in)``. Each factor is
    one parameter (``lokr_w1`` / ``lokr_w2``) or a rank-``r`` pair (``lokr_w1_a``, ``lokr_w1_b`` / ``lokr_w2_a``,
    ``lokr_w2_b``)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        config: LoKrConfig,
        r: int | None = None,
        alpha: float | None = None,
        conv: tuple[Any, Any, Any] | None = None,
    ) -> None:
        super().__init__(d_in, d_out, config, r, alpha, conv)
        r = self.r
        self.rescale_rank_dropout = config.rank_dropout_scale
        a, b = factorization(d_out, config.decompose_factor)
        c, d = factorization(d_in, config.decompose_factor)
        self.w1 = self._factor("lokr_w1", a, c, r, full=not (config.decompose_both and r < max(a, c) / 2))
        # a convolution: a full W2 holds the kernel (b, d, kh, kw), a factored one the flattened kernel, or with
        # use_effective_conv2d its CP factors (lokr_t2 (r, r, kh, kw), lokr_w2_a (r, b), lokr_w2_b (r, d))
        full2 = not r < max(b, d) / 2
        if self.effective and not full2:
            self.w2: tuple[str, ...] = ("lokr_t2", "lokr_w2_a", "lokr_w2_b")
            self.lokr_w2_a = nn.Parameter(torch.empty(r, b))  # (r, b)
            self.lokr_w2_b = nn.Parameter(torch.empty(r, d))  # (r, d)
            self.lokr_t2 = nn.Parameter(torch.empty(r, r, *self.core_kernel))  # (r, r, kh, kw) / (r, r, k, 1)
        else:
            self.w2 = self._factor("lokr_w2", b, d * (1 if full2 else math.prod(self.kernel)), r, full=full2)
        if full2 and self.kernel:
            self.lokr_w2 = nn.Parameter(torch.empty(b, d, *self.kernel))  # (b, d, kh, kw) / (b, d, k)
        with torch.no_grad():
            for param in self.parameters():
                nn.init.kaiming_uniform_(param, a=math.sqrt(5))
            if config.init_weights == "lycoris":
                nn.init.zeros_(getattr(self, "lokr_w2" if self.w2 == ("lokr_w2",) else "lokr_w2_b"))
            elif config.init_weights:
                nn.init.zeros_(getattr(self, "lokr_w1" if self.w1 == ("lokr_w1",) else "lokr_w1_a"))

    def _factor(self, name: str, rows: int, cols: int, r: int, full: bool) -> tuple[str, ...]:
        """Register factor ``name`` ``(rows, cols)``: one parameter, or ``name_a (rows, r)`` and ``name_b (r, cols)``;
        returns the parameter names."""
        if full:
            self.register_parameter(name, nn.Parameter(torch.empty(rows, cols)))  # (rows, cols)
            return (name,)
        self.register_parameter(f"{name}_a", nn.Parameter(torch.empty(rows, r)))  # (rows, r)
        self.register_parameter(f"{name}_b", nn.Parameter(torch.empty(r, cols)))  # (r, cols)
        return (f"{name}_a", f"{name}_b")

    def _matrix(self, names: tuple[str, ...]) -> torch.Tensor:
        if len(names) == 1:
            return getattr(self, names[0])  # type: ignore[no-any-return]
        if len(names) == 3:  # CP: core (r, r, kh, kw), modes (r, b), (r, d) -> (b, d, kh, kw)
            return cp_kernel(*(getattr(self, name) for name in names))
        return getattr(self, names[0]) @ getattr(self, names[1])  # type: ignore[no-any-return]

    @classmethod
    def shape_from(cls, params: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
        def size(name: str) -> tuple[int, int] | None:
            if name == "lokr_w2" and "lokr_t2" in params:  # CP: lokr_w2_a (r, b), lokr_w2_b (r, d)
                if f"{name}_a" not in params or f"{name}_b" not in params:
                    return None
                return int(params[f"{name}_a"].shape[1]), int(params[f"{name}_b"].shape[1])
            if name in params:
                return int(params[name].shape[0]), int(params[name].shape[1])
            if f"{name}_a" in params and f"{name}_b" in params:
                return int(params[f"{name}_a"].shape[0]), int(params[f"{name}_b"].shape[1])
            return None

        first, second = size("lokr_w1"), size("lokr_w2")
        if first is None or second is None:
            return None
        return first[1] * second[1], first[0] * second[0]

    @classmethod
    def conv_shape_from(cls, params: Mapping[str, torch.Tensor]) -> tuple[int, int, tuple[int, ...]] | None:
        """A full ``lokr_w2 (b, d, kh, kw)`` or ``(b, d, k)`` (a Conv1d), or a CP core ``lokr_t2 (r, r, kh, kw)``
        (a Conv1d's ``(r, r, k, 1)`` reads as kernel ``(k, 1)``, the same update), with ``W1 (a, c)``:
        ``(c·d, a·b, kernel)``."""
        w2 = params.get("lokr_t2", params.get("lokr_w2"))
        shape = cls.shape_from(params)
        if w2 is None or w2.dim() not in (3, 4) or shape is None or ("lokr_t2" in params and w2.dim() != 4):
            return None
        return shape[0], shape[1], tuple(int(k) for k in w2.shape[2:])

    @classmethod
    def flattened_conv_from(
        cls, params: Mapping[str, torch.Tensor], config: LoKrConfig
    ) -> tuple[int, int, tuple[int, ...]] | None:
        """A convolution whose flattened kernel a factored ``W2`` covers, when the factors are not a linear layer's
        (a folder peft wrote, which does not declare its convolutions): ``W1 (a, c)``, ``lokr_w2_a (b, r)``,
        ``lokr_w2_b (r, n)``. A linear layer of ``c·n`` inputs has ``(c, n) = factorization(c·n)``; a convolution
        of ``c_in = c·d`` channels and a kernel of ``kh·kw = n / d`` entries has ``(c, d) = factorization(c·d)`` and
        ``r < max(b, d) / 2`` (peft's rules). When the linear reading fails, the first such ``d`` (any gives the same
        factor shapes; the files do not fix ``kh`` and ``kw`` apart) as ``(c·d, a·b, (1, n / d))``; else None."""
        w2a, w2b, shape = params.get("lokr_w2_a"), params.get("lokr_w2_b"), cls.shape_from(params)
        if config.use_effective_conv2d or "lokr_t2" in params or w2a is None or w2b is None or shape is None:
            return None  # with use_effective_conv2d only a 1x1 kernel is flattened: the linear reading
        if w2b.dim() != 2 or w2a.dim() != 2:
            return None
        r, n, b = int(w2b.shape[0]), int(w2b.shape[1]), int(w2a.shape[0])
        c, split = shape[0] // n, config.decompose_factor
        if factorization(c * n, split) == (c, n):
            return None  # a linear layer's split
        for d in range(1, n + 1):
            if n % d == 0 and factorization(c * d, split) == (c, d) and r < max(b, d) / 2:
                return c * d, shape[1], (1, n // d)
        return None

    def _product(self) -> torch.Tensor:
        w1 = self._matrix(self.w1)  # (a, c)
        w2 = self._matrix(self.w2)  # (b, d) (a convolution: (b, d·kh·kw) or (b, d, kh, kw) full or CP)
        if w2.dim() == 4:  # (a Conv1d's CP kernel is (b, d, k, 1))
            w1 = w1[:, :, None, None]  # (a, c, 1, 1)
        # a Conv1d's full W2 (b, d, k): peft's kron of (a, c) with it reads W1 as (1, a, c), giving (b, a·d, c·k),
        # which weight_delta reshapes to (c_out, c_in, k) as peft does (not the channel-wise Kronecker product)
        # flatten().view(): canonical strides (a CP kernel's size-1 dimension can keep a stride that torch.kron's
        # internal view rejects, which .contiguous() leaves as it is)
        w2 = w2.contiguous().flatten().view(w2.shape)
        return torch.kron(w1, w2)  # (a·b, c·d[·kh·kw]) = (d_out, d_in[...])


class LoKrConvLayer(LoKrLayer):
    """LoKr on an ``nn.Conv2d`` / ``nn.Conv1d``: ``d_in`` the input channels, the kernel in ``W2`` (full
    ``(b, d, kh, kw)`` / ``(b, d, k)``, factored over the flattened kernel ``(b, r) · (r, d·kh·kw)``, or with
    ``use_effective_conv2d`` on a kernel larger than 1×1 / 1 CP-decomposed, ``W2 = cp_kernel(T2 (r, r, kh, kw),
    W2a (r, b), W2b (r, d))``, a Conv1d's core ``(r, r, k, 1)``); ``ΔW`` reshaped to the weight's shape."""

    def __init__(
        self, module: NamedModule, config: LoKrConfig, r: int | None = None, alpha: float | None = None
    ) -> None:
        super().__init__(module.d_in, module.d_out, config, r, alpha, conv=module.conv)


@register_method("lokr")
class LoKrAdapter(LycorisAdapter):
    """LoKr over all layers: ``layers[str(i)][point]`` (or ``by_name[...]``) is a ``LoKrLayer`` per target."""

    config_cls = LoKrConfig  # type: ignore[assignment]
    config: LoKrConfig  # type: ignore[assignment]
    layer_class: ClassVar[type[LoRALayer]] = LoKrLayer  # type: ignore[assignment]
    conv_layer_class: ClassVar[type[ConvLoRALayer]] = LoKrConvLayer  # type: ignore[assignment]

    @classmethod
    def conv_shapes_for_config(
        cls, config: MethodConfig, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[tuple[str, int, int, tuple[int, ...]], ...]:
        """The convolutions the weights say (``conv_shapes_from``), and those a factored ``W2`` covers the flattened
        kernel of by peft's split rules (``LoKrLayer.flattened_conv_from``)."""
        said = cls.conv_shapes_from(tensors)
        if not isinstance(config, LoKrConfig):
            return said
        known = {shape[0] for shape in said}
        found = (
            (point, LoKrLayer.flattened_conv_from(params, config))
            for point, params in factors_by_point(tensors).items()
            if point not in known
        )
        return said + tuple((point, *shape) for point, shape in found if shape is not None)
