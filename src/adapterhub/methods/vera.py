"""VeRA (Kopiczko et al. 2024, "Vector-based Random Matrix Adaptation"; peft's ``VeraModel``): frozen random
projections shared by every target, and two trained scaling vectors per target.

For a projection ``y = W x + b`` with ``W: (d_out, d_in)``::

    y' = y + λ_b ⊙ (B_s (λ_d ⊙ (A_s dropout(x))))          A_s = A[:, :d_in] (r, d_in)   B_s = B[:d_out, :] (d_out, r)
    ΔW = diag(λ_b) B_s diag(λ_d) A_s                         (d_out, d_in)

``A (r, max d_in)`` and ``B (max d_out, r)`` are one pair per adapter, sized to the largest input / output width
among its targets and drawn as peft draws them: a CPU ``torch.Generator`` seeded with ``projection_prng_key``
fills ``A`` and then ``B`` from ``U(-bound, bound)``, ``bound = sqrt(3) · sqrt(2) / sqrt(fan_in)`` (Kaiming-uniform
with ``fan_in`` the number of columns: ``max d_in`` for ``A``, ``r`` for ``B``), so the same key gives peft's
matrices bit for bit. They are buffers, never trained; the adapter's ``state_dict`` holds them (``vera_A``,
``vera_B``) only with ``save_projection``, otherwise loading regenerates them from the key.

A new adapter (``init_weights``) has ``λ_b = b_initial`` (default 0: the identity) and ``λ_d = d_initial``.
``init_weights=False``: ``λ_b = 1``, ``λ_d ~ N(0, 1)``. Parameters: ``r + d_out`` per target. Parameter names are
peft's (``vera_lambda_b``, ``vera_lambda_d``), so its files map one to one.

``use_gating`` (that library's gated VeRA, either form): a gate ``g = Linear(d_in, 1)`` per target (weight
``N(0, 0.02)``, bias as ``nn.Linear``; ``methods.gating``'s LoRA gate) and the update times
``mean_T sigmoid(g(x))`` (of the input before dropout, one number per row) in place of ``scaling``; parameters
``layers.<i>.<point>.gate.weight`` / ``gate.bias``. Not mergeable; a BatchSplit runs its row blocks one by one.

``use_dora`` (that library's DVoRA, either form): a magnitude ``m (d_out,)`` per target, started at ``‖W‖`` per
output row when the adapter is added (``init_from_base``), and with ``k = m / ‖W + ΔW₀‖`` per row, where
``ΔW₀ = Λ_b B_s Λ_d A_s`` leaves out ``scaling`` (as that library's norm; not detached)::

    y' = k ⊙ (W x + b + update(x))          update = scaling (or the gate) · Λ_b B_s Λ_d A_s dropout(x)

so the bias is rescaled too (unlike peft's DoRA, ``methods.dora``). Merging writes exactly that:
``W' = k ⊙ (W + s ΔW₀)``, ``b' = k ⊙ b`` (``k`` kept for the unmerge); not with a gate. Parameter
``layers.<i>.<point>.magnitude``; a BatchSplit runs its row blocks one by one.

``lambda_form="matrix"`` (the `adapters` library 1.3's VeRA): the same names hold full trained matrices
``Λ_d (r, r)`` and ``Λ_b (d_out, d_out)``, started at ``diag(λ_d)`` / ``diag(λ_b)`` of the vectors above, and the
update is ``scaling · Λ_b B_s Λ_d A_s x`` (``r² + d_out²`` parameters per target). The vector form is this with
diagonal matrices and ``scaling`` 1.

The adapter is LoRA's (``LoRAAdapter``: targets by spec point or module name, ``modules_to_save``, Stack / Split /
BatchSplit / Parallel / Average, merging ``ΔW`` into ``W``) with a ``VeraLayer`` per target; only ``nn.Linear`` and
GPT-2 ``Conv1D`` can be targets (as peft).
"""

from __future__ import annotations

import math
import re
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
    ModelDims,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.methods.gating import normal_gate
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.spec.configs import VeraConfig

_KEY = re.compile(r"^(?:layers\.\d+\.[a-z_]+|by_name\.[^.]+)\.vera_lambda_b$")


def shared_projections(key: int, r: int, d_in: int, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (r, d_in), B (d_out, r))`` drawn from a CPU generator seeded with ``key``, ``A`` first, each from
    ``U(-bound, bound)`` with ``bound = sqrt(3) · sqrt(2) / sqrt(columns)`` (peft's ``_kaiming_init``)."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    out = []
    for shape in ((r, d_in), (d_out, r)):
        bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
        out.append(torch.empty(shape, device="cpu").uniform_(-bound, bound, generator=generator))
    return out[0], out[1]


class VeraLayer(nn.Module):
    """The trained vectors of one projection: ``vera_lambda_d`` ``(r,)`` and ``vera_lambda_b`` ``(d_out,)`` (with
    ``lambda_form="matrix"``: ``(r, r)`` and ``(d_out, d_out)``); the shared ``A`` / ``B`` are handed in by the
    adapter. ``r`` / ``alpha`` (rank / alpha patterns) do not apply to VeRA and are ignored."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        config: VeraConfig,
        r: int | None = None,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.d_in, self.d_out, self.r = d_in, d_out, config.r
        self.matrix, self.scaling = config.lambda_form == "matrix", config.scaling
        lambda_b = torch.ones(d_out)  # (d_out,)
        lambda_d = torch.randn(config.r)  # (r,)
        if config.init_weights:
            lambda_d.fill_(config.d_initial)
            lambda_b.fill_(config.b_initial)
        if self.matrix:
            lambda_b, lambda_d = torch.diag(lambda_b), torch.diag(lambda_d)  # (d_out, d_out), (r, r)
        self.vera_lambda_b = nn.Parameter(lambda_b)
        self.vera_lambda_d = nn.Parameter(lambda_d)
        self.dropout = nn.Dropout(config.vera_dropout)
        # use_gating: Linear(d_in, 1) whose mean_T sigmoid(gate(x)) replaces the scaling (the `adapters` library's)
        self.gate = normal_gate(d_in, 1, zero_bias=False) if config.use_gating else None
        # use_dora (DVoRA): the magnitude m (d_out,), set to ‖W‖ per row by the adapter's init_from_base
        self.magnitude = nn.Parameter(torch.ones(d_out)) if config.use_dora else None

    def _sliced(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.vera_lambda_d.device
        return a[:, : self.d_in].to(device), b[: self.d_out, :].to(device)  # (r, d_in), (d_out, r)

    def delta(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``λ_b ⊙ (B_s (λ_d ⊙ (A_s dropout(x))))``, or ``scaling · Λ_b B_s Λ_d A_s dropout(x)`` in the matrix
        form: ``(..., d_in) -> (..., d_out)``. With a gate, ``mean_T sigmoid(gate(x))`` (of the input before
        dropout, one number per row) multiplies the update instead of ``scaling``."""
        a_s, b_s = self._sliced(a, b)
        u = x.to(self.vera_lambda_d.dtype)  # (B, T, d_in): the gate's input
        x = self.dropout(u)
        z = F.linear(x, a_s.to(x.dtype))  # (..., r)
        if self.matrix:
            z = F.linear(z, self.vera_lambda_d)  # (..., r)
            y = F.linear(F.linear(z, b_s.to(x.dtype)), self.vera_lambda_b)  # (..., d_out)
        else:
            y = self.vera_lambda_b * F.linear(self.vera_lambda_d * z, b_s.to(x.dtype))  # (..., d_out)
        if self.gate is not None:
            gate = torch.sigmoid(self.gate(u))  # (B, T, 1)
            return y * (gate.mean(dim=1, keepdim=True) if u.dim() > 2 else gate)  # (B, T, d_out) · (B, 1, 1)
        return y if self.scaling == 1.0 else y * self.scaling

    def factors(
        self, a: torch.Tensor, b: torch.Tensor, scaled: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(down (r, d_in), up (d_out, r))`` with ``ΔW = up @ down``: ``diag(λ_d) A_s`` and ``diag(λ_b) B_s``
        (matrix form: ``Λ_d A_s`` and ``scaling · Λ_b B_s``; ``scaled=False``: without ``scaling``)."""
        a_s, b_s = self._sliced(a, b)
        lambda_b, lambda_d = self.vera_lambda_b, self.vera_lambda_d
        if self.matrix:
            down, up = lambda_d @ a_s.to(lambda_d.dtype), lambda_b @ b_s.to(lambda_b.dtype)
        else:
            down = lambda_d.unsqueeze(-1) * a_s.to(lambda_d.dtype)
            up = lambda_b.unsqueeze(-1) * b_s.to(lambda_b.dtype)
        return down, (up if self.scaling == 1.0 or not scaled else up * self.scaling)

    def add_to(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``y + delta(x)`` in ``y``'s dtype."""
        return y + self.delta(x, a, b).to(y.dtype)

    def weight_delta(self, a: torch.Tensor, b: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """``ΔW = diag(λ_b) B_s diag(λ_d) A_s`` (matrix form: ``scaling · Λ_b B_s Λ_d A_s``; ``scaled=False``:
        without ``scaling``): ``(d_out, d_in)``."""
        down, up = self.factors(a, b, scaled)
        return up @ down

    def dora_scale(self, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """DVoRA's ``m / ‖W + ΔW‖`` per output row with ``ΔW`` without ``scaling`` (the `adapters` library's norm),
        with gradient into ``m`` and ``ΔW`` (that library does not detach it): ``(d_out,)``."""
        assert self.magnitude is not None
        delta = self.weight_delta(a, b, scaled=False)  # (d_out, d_in)
        norm = torch.linalg.norm(weight.to(delta.dtype) + delta, dim=1)  # (d_out,)
        return self.magnitude / norm

    def add_dora(
        self, y: torch.Tensor, inputs: LinearInputs, a: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        """``y + (k − 1) ⊙ (W x + b) + k ⊙ delta(x)`` with ``k = dora_scale``: on the projection's own output,
        ``k ⊙ (W x + b + delta(x))`` (the bias is scaled too, and ``W x`` sees no dropout), in ``y``'s dtype."""
        weight = inputs.require_weight("DVoRA (VeRA with use_dora)")  # (d_out, d_in)
        k = self.dora_scale(weight, a, b)  # (d_out,)
        base = inputs.projection()  # (..., d_out): W x
        if inputs.bias is not None:
            base = base + inputs.bias
        update = self.delta(inputs.x, a, b)  # (..., d_out)
        return y + ((k - 1) * base.to(k.dtype) + k * update).to(y.dtype)


@register_method("vera")
class VeraAdapter(LoRAAdapter):
    """VeRA over all layers: ``layers[str(i)][point]`` (or ``by_name[...]``) is a ``VeraLayer`` per target, and
    ``vera_A`` / ``vera_B`` the adapter's shared projections (buffers; persistent with ``save_projection``)."""

    config_cls = VeraConfig  # type: ignore[assignment]
    config: VeraConfig  # type: ignore[assignment]
    layer_class: ClassVar[type[LoRALayer]] = VeraLayer  # type: ignore[assignment]

    vera_A: torch.Tensor
    vera_B: torch.Tensor

    def __init__(self, name: str, config: VeraConfig, dims: ModelDims) -> None:
        super().__init__(name, config, dims)  # type: ignore[arg-type]
        sites: list[VeraLayer] = [site for _, _, site in self.lora_targets()]  # type: ignore[misc]
        if not sites:
            raise ConfigError(
                f"VeRA adapter {name!r} adapts no projection of this {dims.model_type} model (targets / "
                "leave_out / layers_to_transform leave nothing); choose at least one target."
            )
        # gated: the update depends on the input beyond x · ΔWᵀ, so there is no weight change to merge
        object.__setattr__(self, "mergeable", not config.use_gating)
        self._merge_scales: dict[tuple[int, str], torch.Tensor] = {}  # DVoRA: k of each merged target
        d_in, d_out = max(s.d_in for s in sites), max(s.d_out for s in sites)
        a, b = shared_projections(config.projection_prng_key, config.r, d_in, d_out)
        device = torch.get_default_device()
        self.register_buffer("vera_A", a.to(device), persistent=config.save_projection)  # (r, max d_in)
        self.register_buffer("vera_B", b.to(device), persistent=config.save_projection)  # (max d_out, r)

    @classmethod
    def linear_shapes_from(cls, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, int, int], ...]:
        """``(point, d_in, d_out)`` that saved vectors imply: ``d_out`` from ``λ_b``; ``d_in`` is the saved ``A``'s
        width when the file holds it, else unknown (``d_out`` stands in: without ``A`` in the file no saved shape
        depends on it)."""
        projection = tensors.get("vera_A")
        out: dict[str, tuple[str, int, int]] = {}
        for key, tensor in tensors.items():
            if _KEY.match(key) and key.startswith("layers."):
                point, d_out = key.split(".")[2], int(tensor.shape[0])
                d_in = int(projection.shape[1]) if projection is not None else d_out
                out[point] = (point, d_in, d_out)
        return tuple(out.values())

    def site(self, layer: int, point: str | Point) -> VeraLayer:
        """The ``VeraLayer`` at a spec point of ``layer`` or at a point ``("module", path)``."""
        return self.layer_at(layer, point)  # type: ignore[return-value]

    def init_from_base(self, base: BaseWeights) -> None:
        """DVoRA (``use_dora``): ``m = ‖W‖`` per output row of each target, as the `adapters` library starts it."""
        if not self.config.use_dora:
            return
        with torch.no_grad():
            for layer, point, site in self.lora_targets():
                weight, _ = base(layer, point)  # (d_out, d_in)
                magnitude: torch.Tensor = site.magnitude  # type: ignore[assignment]
                magnitude.copy_(torch.linalg.norm(weight.float(), dim=1).to(magnitude.dtype))

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> LinearRunning:
        site = self.site(layer, point)
        if site.magnitude is not None:
            assert isinstance(inputs, LinearInputs)
            return running.with_y(site.add_dora(running.y, inputs, self.vera_A, self.vera_B))  # type: ignore[no-any-return]
        y = site.add_to(running.y, inputs.x, self.vera_A, self.vera_B)  # type: ignore[attr-defined]
        return running.with_y(y)  # type: ignore[no-any-return]

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        """Row block ``k`` through adapter ``k``'s ``VeraLayer.factors`` (up and down) in two batched matmuls.
        Needs VeRA adapters of one rank and no training-time dropout; else None (the interpreter runs the row
        blocks one by one)."""
        if not all(type(m) is type(self) for m in modules) or not isinstance(inputs, LinearInputs):
            return None
        vera: list[VeraAdapter] = list(modules)  # type: ignore[arg-type]
        sites = [m.site(layer, point) for m in vera]
        if len({s.r for s in sites}) > 1 or any(s.training and s.dropout.p > 0 for s in sites):
            return None
        if any(s.gate is not None or s.magnitude is not None for s in sites):
            return None  # gated / DVoRA: row blocks one by one
        x, y = inputs.x, inputs.y  # (B, T, d_in), (B, T, d_out)
        if x.dim() < 2:
            return None
        downs, ups = [], []
        for module, site in zip(vera, sites, strict=True):
            down, up = site.factors(module.vera_A, module.vera_B)
            downs.append(down)  # (r, d_in)
            ups.append(up)  # (d_out, r)
        a = torch.stack(downs).transpose(1, 2).to(x.dtype)  # (K, d_in, r)
        b = torch.stack(ups).transpose(1, 2).to(x.dtype)  # (K, r, d_out)
        if len(set(sizes)) == 1:
            groups = x.reshape(len(sites), -1, x.shape[-1])  # (K, rows·T, d_in)
        else:
            owner = torch.repeat_interleave(
                torch.arange(len(sites), device=x.device), torch.tensor(list(sizes), device=x.device)
            )  # (B,)
            a, b = a[owner], b[owner]
            groups = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, d_in)
        delta = torch.bmm(torch.bmm(groups, a), b)  # (G, rows, d_out)
        return y + delta.reshape(y.shape).to(y.dtype)

    def merged_deltas(self) -> Iterator[tuple[int, str, torch.Tensor]]:
        if self.config.use_gating:
            raise ConfigError(
                f"Gated VeRA ({self.adapter_name!r}, use_gating) multiplies its update by a gate computed from each "
                "input, which no weight change can express, so it cannot be merged (the `adapters` library refuses "
                "too). Keep it unmerged."
            )
        if self.config.use_dora:
            raise ConfigError(
                f"DVoRA ({self.adapter_name!r}, use_dora) rescales the base weights: merge it with "
                "model.merge_adapter(name)."
            )
        for layer, point, site in self.lora_targets():
            yield layer, point, site.weight_delta(self.vera_A, self.vera_B)  # type: ignore[call-arg]

    def merge_updates(
        self, base: BaseWeights, merge: bool
    ) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor | None]]:
        """DVoRA: merge ``W' = k ⊙ (W + s ΔW)``, ``b' = k ⊙ b`` per row (``k = m / ‖W + ΔW‖``, kept), exactly
        the forward; unmerge ``W = W' / k − s ΔW``, ``b = b' / k``. Otherwise ``± ΔW`` as VeRA."""
        if not self.config.use_dora:
            yield from super().merge_updates(base, merge)
            return
        for layer, point, site in self.lora_targets():
            weight, bias = base(layer, point)  # (d_out, d_in), (d_out,) or None
            with torch.no_grad():
                delta = site.weight_delta(self.vera_A, self.vera_B).to(weight.dtype)  # type: ignore[call-arg]
                if merge:
                    k = site.dora_scale(weight, self.vera_A, self.vera_B).to(weight.dtype)  # type: ignore[operator]
                    self._merge_scales[(layer, point)] = k
                    new_weight = k.view(-1, 1) * (weight + delta)
                else:
                    k = self._merge_scales.pop((layer, point))
                    new_weight = weight / k.view(-1, 1) - delta
                bias_delta = None
                if bias is not None:
                    bias_delta = (bias * k if merge else bias / k) - bias
            yield layer, point, new_weight - weight, bias_delta
