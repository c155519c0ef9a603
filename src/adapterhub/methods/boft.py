"""BOFT (Liu et al. 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization"; peft 0.21's
``BOFTModel``): the input of each target projection is rotated by a product of butterfly-permuted block-diagonal
orthogonal matrices, and each output row is scaled.

For a projection ``y = W x + b`` with ``W: (d_out, d_in)``, ``d_in = D · H`` (``D`` blocks of size ``H``) and
``m = boft_n_butterfly_factor``::

    R_ij = (I - S_ij)(I + S_ij)⁻¹      S_ij = (A_ij - A_ijᵀ) / 2   A_ij: (H, H), the parameter boft_R[i, j]
    B_i  = P_i blockdiag(R_i1, ..., R_iD) P_iᵀ          P_i: the i-th butterfly permutation (P_0 = I)
    M    = B_(m-1) ⋯ B_1 B_0                             (d_in, d_in), orthogonal
    y'   = s ⊙ (W Mᵀ x) + b                             s: (d_out,) boft_s; as rows: s ⊙ ((x M) Wᵀ) + b
    merge: W' = diag(s) W Mᵀ;  unmerge: W = diag(s)⁻¹ W' (Mᵀ)⁻¹

``P_i`` (peft's ``block_butterfly_perm``): within each chunk of ``d_in / (D / 2^i)`` inputs, sub-blocks of ``H / 2``
are reordered evens first, then odds. ``boft_dropout`` (training): one factor ``i`` drawn at random has
``int(p · D)`` of its blocks (a random permutation picks them) replaced by the identity, as peft draws it.
A new adapter (``init_weights``) has ``A = 0``, ``s = 1``: the identity. Parameters: ``boft_R`` ``(m, D, H, H)`` and
``boft_s`` ``(d_out, 1)``, peft's names.

peft builds ``M`` for ``m > 1`` with its CUDA extension (fbd) only: without it (any CPU machine) peft sets ``m``
to 1 with a warning. Here ``M`` is computed in plain torch for any ``m`` (permutations by index, exact), equal to
the extension's product; on a machine without it, peft itself cannot load an ``m > 1`` file. Composition and
merging: ``methods.oft`` (``OrthogonalAdapter``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import register_method
from adapterhub.methods.lora import LoRALayer
from adapterhub.methods.oft import OrthogonalAdapter, OrthogonalLayer, cayley
from adapterhub.spec.configs.oft import BOFTConfig


def butterfly_permutation(width: int, blocks: int, half: int, factor: int) -> torch.Tensor:
    """The index form of peft's butterfly permutation (``P[i, perm[i]] = 1``): ``arange(width)`` when ``factor`` is
    0; else within every chunk of ``width // blocks`` entries, its sub-blocks of ``half`` entries in the order
    ``0, 2, 4, ..., 1, 3, 5, ...``. ``(width,)`` long."""
    if factor == 0:
        return torch.arange(width)
    if blocks * half * 2 > width:
        raise ConfigError(f"BOFT: {blocks} butterfly blocks of {2 * half} do not fit {width} inputs.")
    chunk = width // blocks
    count = chunk // half  # sub-blocks per chunk
    order = [*range(0, count, 2), *range(1, count, 2)]
    within = torch.cat([torch.arange(p * half, (p + 1) * half) for p in order])  # (chunk,)
    return torch.cat([start + within for start in range(0, width, chunk)])


def boft_blocks(d_in: int, config: BOFTConfig) -> tuple[int, int]:
    """``(D, H)``: block count and size of a projection with ``d_in`` inputs; peft's checks, as errors."""
    extra = config.boft_n_butterfly_factor - 1  # the paper's count of butterfly factors beyond the first
    size, num = config.boft_block_size, config.boft_block_num
    if size == 0:
        if d_in % num != 0:
            raise ConfigError(f"BOFT: the input width {d_in} is not divisible by boft_block_num={num}.")
        if extra and (num % (2**extra) != 0 or 2**extra > num):
            raise ConfigError(
                f"BOFT: boft_block_num={num} must be a multiple of 2^(boft_n_butterfly_factor - 1) = {2**extra}."
            )
        size = d_in // num
    else:
        if d_in % size != 0:
            raise ConfigError(f"BOFT: the input width {d_in} is not divisible by boft_block_size={size}.")
        if extra and d_in % (size * 2**extra) != 0:
            raise ConfigError(
                f"BOFT: the input width {d_in} is not divisible by boft_block_size x 2^(boft_n_butterfly_factor - 1)"
                f" = {size * 2**extra}; choose a smaller block size or factor."
            )
        num = d_in // size
    if extra and (num % 2 or size % 2):
        raise ConfigError(
            f"BOFT with boft_n_butterfly_factor > 1 needs an even block count and size; got {num} blocks of {size}."
        )
    return num, size


class BOFTLayer(OrthogonalLayer):
    """The butterfly rotation and output scale of one projection: ``boft_R`` ``(m, D, H, H)``, ``boft_s``
    ``(d_out, 1)``. ``r`` / ``alpha`` do not apply and are ignored."""

    def __init__(
        self, d_in: int, d_out: int, config: BOFTConfig, r: int | None = None, alpha: float | None = None
    ) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.blocks, self.block_size = boft_blocks(d_in, config)
        factors = config.boft_n_butterfly_factor
        self.dropout = config.boft_dropout
        perms = [
            butterfly_permutation(d_in, self.blocks // 2**i, self.block_size // 2, factors - 1)
            for i in range(factors)
        ]
        self.perms: torch.Tensor
        self.register_buffer("perms", torch.stack(perms), persistent=False)  # (m, d_in)
        self.boft_R = nn.Parameter(torch.zeros(factors, self.blocks, self.block_size, self.block_size))
        self.boft_s = nn.Parameter(torch.ones(d_out, 1))  # (d_out, 1)
        if not config.init_weights:
            with torch.no_grad():
                nn.init.normal_(self.boft_R, mean=0.0, std=0.1)
                nn.init.normal_(self.boft_s, mean=1.0, std=0.1)

    @classmethod
    def shape_from(cls, params: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
        """``(d_in, d_out) = (D · H, rows of boft_s)`` of saved parameters, or None when incomplete."""
        if "boft_R" not in params or "boft_s" not in params:
            return None
        _, blocks, size, _ = params["boft_R"].shape
        return int(blocks * size), int(params["boft_s"].shape[0])

    def matrix(self) -> torch.Tensor:
        """``M = B_(m-1) ⋯ B_0``: ``(d_in, d_in)`` (with ``boft_dropout``'s identity blocks while training)."""
        factors, blocks, size, _ = self.boft_R.shape
        raw = self.boft_R.reshape(factors * blocks, size, size)
        rotations = cayley(0.5 * (raw - raw.transpose(1, 2)), None).view(factors, blocks, size, size)
        if self.training and self.dropout > 0:
            chosen = int(torch.randint(0, factors, (1,)).item())
            dropped = int(self.dropout * blocks)
            mask = torch.cat([torch.ones(dropped), torch.zeros(blocks - dropped)])
            mask = mask[torch.randperm(blocks)].view(blocks, 1, 1).to(rotations)  # (D, 1, 1)
            eye = torch.eye(size, device=rotations.device, dtype=rotations.dtype)
            rotations = torch.cat(
                [
                    rotations[:chosen],
                    ((1 - mask) * rotations[chosen] + mask * eye)[None],
                    rotations[chosen + 1 :],
                ]
            )
        out: torch.Tensor | None = None
        for i in range(factors):
            perm = self.perms[i]
            factor = torch.block_diag(*rotations[i])[perm][:, perm]  # P_i BD_i P_iᵀ
            out = factor if out is None else factor @ out
        assert out is not None
        return out

    def project(
        self, x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``s ⊙ (W diag(s_in) Mᵀ x)`` (as rows: ``s ⊙ ((s_in ⊙ (x M)) Wᵀ)``): ``(..., d_in) -> (..., d_out)``."""
        rotated = x @ self.matrix().to(x.dtype)  # (..., d_in)
        rotated = rotated if in_scale is None else rotated * in_scale
        return F.linear(rotated, weight) * self.boft_s.view(-1).to(x.dtype)

    def merged(self, weight: torch.Tensor) -> torch.Tensor:
        """``diag(s) W Mᵀ``: ``(d_out, d_in)``."""
        return (weight @ self.matrix().to(weight.dtype).t()) * self.boft_s.to(weight.dtype)

    def unmerged(self, weight: torch.Tensor) -> torch.Tensor:
        """``diag(s)⁻¹ W' (Mᵀ)⁻¹`` in float64: ``(d_out, d_in)``."""
        inverse = torch.linalg.inv(self.matrix().double().t())
        return ((weight.double() / self.boft_s.double()) @ inverse).to(weight.dtype)


@register_method("boft")
class BOFTAdapter(OrthogonalAdapter):
    """BOFT over all layers: ``layers[str(i)][point]`` (or ``by_name[...]``) is a ``BOFTLayer`` per target."""

    config_cls = BOFTConfig  # type: ignore[assignment]
    config: BOFTConfig  # type: ignore[assignment]
    layer_class: ClassVar[type[LoRALayer]] = BOFTLayer  # type: ignore[assignment]
    label: ClassVar[str] = "BOFT"
