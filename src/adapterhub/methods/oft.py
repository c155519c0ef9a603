"""OFT (Qiu et al. 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning"; peft 0.21's ``OFTModel``):
the input of each target projection is rotated by a learned block-diagonal orthogonal matrix.

For a projection ``y = W x + b`` with ``W: (d_out, d_in)`` and ``d_in = r · b`` (``r`` blocks of size ``b``)::

    Q_i = skew(q_i) = U - Uᵀ          q_i: (b(b-1)/2,) the strict upper triangle U of Q_i, row-major
    R_i = (I - Q_i)(I + Q_i)⁻¹        (use_cayley_neumann=False: the exact Cayley transform)
    R_i = I + 2Q + 2Q² + ... + 2Q^k + Q^(k+1),   k = max(2, n - 2)   (n = num_cayley_neumann_terms > 2; as peft)
    x' = x R  (x as a row: each block of b inputs times its R_i)   R = blockdiag(R_1, ..., R_r): (d_in, d_in)
    y' = W Rᵀ x + b                   merge: W' = W Rᵀ; unmerge: W = W' (Rᵀ)⁻¹

``block_share``: one ``q`` for every block. ``coft``: before each use, every ``Q_i`` whose Frobenius norm exceeds
``eps / sqrt(rows of q)`` is scaled down onto that sphere, and the projected ``q`` is written back into the
parameter (peft's constrained OFT does the same). ``module_dropout`` (training): ``int(p · r)`` blocks, chosen by a
random permutation, are the identity in that call (none with ``block_share``). A new adapter has ``q = 0``: ``R = I``
exactly. Parameter: ``oft_R`` ``(r, b(b-1)/2)`` (``(1, ...)`` with ``block_share``), peft's ``oft_R.weight``.

``OrthogonalAdapter`` is what OFT and BOFT share: LoRA's targets (spec points or module names, ``modules_to_save``)
with a layer per target that changes the base projection (``project``, ``merged``, ``unmerged``). In a Stack an
orthogonal step changes the base projection as the Stack left it, ``W_s = diag(s_out) W diag(s_in)`` (the (IA)³
scalings before it), to ``W_s Rᵀ``, so a Stack equals merging its adapters in order; updates of other methods (LoRA, LoHa, LoKr, VeRA, DoRA) are
added as they are, on the unrotated input. Two rotations of one projection in one Stack (``Stack(oft_a, oft_b)``)
are refused by name, as is an (IA)³ input vector after a rotation: the Stack's running value carries diagonal
input scalings only, and ``R_b R_a`` (peft's forward with two active adapters) and ``R_a R_b`` (peft's merge of
both) differ. Split, BatchSplit (row blocks one by one), Parallel and Average work; Fuse does not (nothing to mix).
Merging writes ``W'`` into the base weight (exactly invertible: unmerging multiplies by the inverse).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    AdapterModule,
    BaseWeights,
    LinearInputs,
    LinearRunning,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.spec.configs import MethodConfig
from adapterhub.spec.configs.oft import OFTConfig

_KEY = re.compile(r"^layers\.(\d+)\.([a-z_]+)\.([a-z_A-Z]+)$")


def nearest_divisor(width: int, value: int) -> int:
    """peft's ``adjust_oft_parameters``: ``value`` moved to a divisor of ``width`` (the nearer of the next divisor
    above and below, the lower on a tie); ``width`` itself when ``value >= width``."""
    if value >= width:
        return width
    higher = value
    while higher <= width and width % higher != 0:
        higher += 1
    lower = value
    while lower > 1 and width % lower != 0:
        lower -= 1
    return lower if value - lower <= higher - value else higher


def oft_blocks(d_in: int, config: OFTConfig) -> tuple[int, int]:
    """``(r, block size)`` of a projection with ``d_in`` inputs (``r · b = d_in``), from whichever of ``r`` /
    ``oft_block_size`` the config sets; a value that does not divide ``d_in`` moves to the nearest divisor with a
    warning (as peft)."""
    given, name = (config.oft_block_size, "oft_block_size") if config.r == 0 else (config.r, "r")
    value = given
    if d_in % given != 0 or given > d_in:
        value = nearest_divisor(d_in, given)
        warnings.warn(
            f"OFT {name}={given} does not divide the input width {d_in}; using {name}={value} there (as peft).",
            stacklevel=4,
        )
    return (d_in // value, value) if name == "oft_block_size" else (value, d_in // value)


def cayley(q: torch.Tensor, neumann_terms: int | None) -> torch.Tensor:
    """``R`` of skew-symmetric ``q`` ``(k, b, b)``: ``(I - Q)(I + Q)⁻¹`` (``neumann_terms`` None) or peft's truncated
    Neumann series ``I + 2Q + ... + 2Q^m + Q^(m+1)`` (``m = max(2, n - 2)``; ``n = 1``: ``I``; ``n = 2``:
    ``I + 2Q``). ``(k, b, b)``."""
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype).expand_as(q)  # (k, b, b)
    if neumann_terms is None:
        return torch.linalg.solve(eye + q, eye - q, left=False)  # R (I + Q) = I - Q
    out = eye.clone()
    if neumann_terms > 1:
        out = out + 2.0 * q
    if neumann_terms > 2:
        power = q
        for _ in range(2, max(2, neumann_terms - 2) + 1):
            power = torch.bmm(power, q)  # Q^j
            out = out + 2.0 * power
        out = out + torch.bmm(power, q)
    return out


class OrthogonalLayer(nn.Module):
    """What OFT's and BOFT's layers provide: the changed projection's output without its bias, ``project(x, W,
    s_in)`` ``(..., d_in) -> (..., d_out)`` for ``W' = W diag(s_in) Rᵀ`` (BOFT ``diag(s) W diag(s_in) Rᵀ``;
    ``s_in`` None: no scaling), and the weight it stands for, ``merged(W)`` (and its inverse ``unmerged``)."""

    def project(
        self, x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def merged(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unmerged(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class OFTLayer(OrthogonalLayer):
    """The rotation of one projection's input: ``oft_R`` ``(r or 1, b(b-1)/2)``; ``rotate(x) = x R``. ``r`` /
    ``alpha`` (targeting's per-module values) do not apply to OFT and are ignored."""

    def __init__(
        self, d_in: int, d_out: int, config: OFTConfig, r: int | None = None, alpha: float | None = None
    ) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.blocks, self.block_size = oft_blocks(d_in, config)
        self.block_share, self.coft, self.eps = config.block_share, config.coft, config.eps
        self.neumann_terms = config.num_cayley_neumann_terms if config.use_cayley_neumann else None
        self.module_dropout = config.module_dropout
        b = self.block_size
        self.oft_R = nn.Parameter(torch.zeros(1 if self.block_share else self.blocks, b * (b - 1) // 2))
        rows, cols = torch.triu_indices(b, b, 1)
        self.rows: torch.Tensor
        self.cols: torch.Tensor
        self.register_buffer("rows", rows, persistent=False)  # (b(b-1)/2,)
        self.register_buffer("cols", cols, persistent=False)
        if not config.init_weights:
            with torch.no_grad():
                nn.init.normal_(self.oft_R, mean=0.0, std=0.1)

    @classmethod
    def shape_from(cls, params: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
        """``(d_in, d_out)`` that saved ``oft_R`` ``(k, b(b-1)/2)`` implies: ``d_in = k · b`` (one block with
        ``block_share``: ``b``, which fits an ``oft_block_size`` config; an ``r`` config with ``block_share`` cannot
        be told from its file alone). OFT's parameters do not depend on ``d_out``: ``d_in`` stands in."""
        if "oft_R" not in params:
            return None
        k, n = params["oft_R"].shape
        b = round((1 + math.sqrt(1 + 8 * int(n))) / 2)
        return int(k) * b, int(k) * b

    def _skew(self, q: torch.Tensor) -> torch.Tensor:
        """``(k, n) -> (k, b, b)``: ``U - Uᵀ`` with ``U``'s strict upper triangle ``q``."""
        upper = q.new_zeros(q.shape[0], self.block_size, self.block_size)
        upper[:, self.rows, self.cols] = q
        return upper - upper.transpose(-2, -1)

    def _constrain(self) -> None:
        """coft: scale every ``Q_i`` with ``‖Q_i‖_F > eps / sqrt(k)`` onto that sphere, in the parameter itself."""
        with torch.no_grad():
            skew = self._skew(self.oft_R)  # (k, b, b)
            radius = self.eps / torch.sqrt(torch.tensor(float(skew.shape[0])))
            norm = torch.linalg.norm(skew, dim=(1, 2), keepdim=True)  # (k, 1, 1)
            projected = torch.where(norm <= radius, skew, radius * (skew / norm))
            self.oft_R.copy_(projected[:, self.rows, self.cols])

    def blocks_R(self) -> torch.Tensor:
        """``R_i`` of every block (coft applied first): ``(r, b, b)`` (one repeated ``r`` times with
        ``block_share``), with ``module_dropout``'s identity blocks while training."""
        if self.coft:
            self._constrain()
        rotations = cayley(self._skew(self.oft_R), self.neumann_terms)  # (k, b, b)
        if self.block_share:
            return rotations.expand(self.blocks, -1, -1)
        if self.training and self.module_dropout > 0:
            dropped = int(self.module_dropout * self.blocks)
            mask = torch.cat([torch.ones(dropped), torch.zeros(self.blocks - dropped)])
            mask = mask[torch.randperm(self.blocks)].view(-1, 1, 1).to(rotations)  # (r, 1, 1)
            eye = torch.eye(self.block_size, device=rotations.device, dtype=rotations.dtype)
            rotations = (1 - mask) * rotations + mask * eye
        return rotations

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``x R``: ``(..., d_in) -> (..., d_in)``, each block of ``b`` inputs times its ``R_i``."""
        rotations = self.blocks_R()  # (r, b, b)
        parts = x.to(rotations.dtype).reshape(*x.shape[:-1], self.blocks, self.block_size)  # (..., r, b)
        return torch.einsum("...rk,rkc->...rc", parts, rotations).reshape(x.shape).to(x.dtype)

    def matrix(self) -> torch.Tensor:
        """``R = blockdiag(R_1, ..., R_r)``: ``(d_in, d_in)``."""
        return torch.block_diag(*self.blocks_R())

    def project(
        self, x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``W diag(s_in) Rᵀ x`` (as rows: ``(s_in ⊙ (x R)) Wᵀ``): ``(..., d_in) -> (..., d_out)``."""
        rotated = self.rotate(x)  # (..., d_in)
        return F.linear(rotated if in_scale is None else rotated * in_scale, weight)

    def merged(self, weight: torch.Tensor) -> torch.Tensor:
        """``W Rᵀ``: ``(d_out, d_in)``."""
        return weight @ self.matrix().to(weight.dtype).t()

    def unmerged(self, weight: torch.Tensor) -> torch.Tensor:
        """``W' (Rᵀ)⁻¹`` (the Neumann ``R`` is only nearly orthogonal: its inverse, not its transpose; in float64).
        ``(d_out, d_in)``."""
        inverse = torch.linalg.inv(self.matrix().double().t())
        return (weight.double() @ inverse).to(weight.dtype)


class OrthogonalAdapter(LoRAAdapter):
    """LoRA's targets with an ``OrthogonalLayer`` per target: the Stack step, merging, and no grouped BatchSplit
    (see the module docstring)."""

    mergeable: ClassVar[bool] = True
    label: ClassVar[str] = ""

    def __init__(self, name: str, config: MethodConfig, dims: Any) -> None:
        super().__init__(name, config, dims)  # type: ignore[arg-type]

    @classmethod
    def shapes_for_config(
        cls, config: MethodConfig, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[tuple[str, int, int], ...]:
        """With ``block_share`` and an ``r`` config the file holds one block of size ``b = d_in / r``, so
        ``d_in = r · b`` (the weights alone give ``b``)."""
        shapes = cls.linear_shapes_from(tensors)
        r = int(getattr(config, "r", 0) or 0)
        if getattr(config, "block_share", False) and r > 0:
            return tuple((point, d_in * r, d_out * r) for point, d_in, d_out in shapes)
        return shapes

    @classmethod
    def linear_shapes_from(cls, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, int, int], ...]:
        """The ``(point, d_in, d_out)`` that saved parameters imply (to validate files without a model)."""
        by_point: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            match = _KEY.match(key)
            if match:
                by_point.setdefault(match.group(2), {})[match.group(3)] = tensor
        layer: Any = cls.layer_class
        shapes = ((point, layer.shape_from(params)) for point, params in by_point.items())
        return tuple((point, shape[0], shape[1]) for point, shape in shapes if shape is not None)

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> LinearRunning:
        """The base projection as the Stack left it, ``W_s = diag(s_out) W diag(s_in)`` ((IA)³ scalings before this
        step), becomes ``W_s Rᵀ`` (BOFT: ``diag(s) W_s Rᵀ``), as merging the adapters in Stack order does:
        recomputed from the rotated input while ``y`` is still the projection's own output (as peft), else the
        difference ``(W_s Rᵀ - W_s) x`` added to the running output."""
        assert isinstance(inputs, LinearInputs)
        if running.rotated is not None:
            raise ConfigError(
                f"Stack rotates the input of {point[1]!r} twice ({running.rotated!r}, then {self.method} adapter "
                f"{self.adapter_name!r}); a Stack carries one rotation per projection, since the order of two is "
                "ambiguous (R_b R_a in peft's forward, R_a R_b in its merge). Merge one of them first "
                "(model.merge_adapter), or compose them with Parallel / Average / BatchSplit."
            )
        site: OrthogonalLayer = self.layer_at(layer, point)  # type: ignore[assignment]
        weight = inputs.require_weight(f"{self.label} (it changes the projection's weight)")
        x = inputs.x  # (batch, seq, d_in)
        if inputs.holds_own_output(running):
            y = site.project(x, weight)  # (batch, seq, d_out)
            y = y if inputs.bias is None else y + inputs.bias
        else:
            scale = running.in_scale
            update = site.project(x, weight, scale) - F.linear(x if scale is None else x * scale, weight)
            y = running.y + (update if running.out_scale is None else update * running.out_scale)
        return LinearRunning(y.to(running.y.dtype), running.in_scale, running.out_scale, self.adapter_name)

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        return None  # row blocks one by one

    def merged_deltas(self) -> Iterator[tuple[int, str, torch.Tensor]]:
        raise ConfigError(
            f"{self.label}'s merged weight depends on the base weights (W Rᵀ): merge with model.merge_adapter(name)."
        )

    def merge_updates(
        self, base: BaseWeights, merge: bool
    ) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor | None]]:
        """Merge: ``W -> W'`` (``W Rᵀ``, BOFT ``diag(s) W Rᵀ``); unmerge: its exact inverse."""
        for layer, point, site in self.lora_targets():
            weight, _ = base(layer, point)  # (d_out, d_in)
            with torch.no_grad():
                changed = site.merged(weight) if merge else site.unmerged(weight)  # type: ignore[operator]
            yield layer, point, changed.to(weight.dtype) - weight, None


@register_method("oft")
class OFTAdapter(OrthogonalAdapter):
    """OFT over all layers: ``layers[str(i)][point]`` (or ``by_name[...]``) is an ``OFTLayer`` per target."""

    config_cls = OFTConfig  # type: ignore[assignment]
    config: OFTConfig  # type: ignore[assignment]
    layer_class: ClassVar[type[LoRALayer]] = OFTLayer  # type: ignore[assignment]
    label: ClassVar[str] = "OFT"
