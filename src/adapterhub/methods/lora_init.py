"""LoRA initialisations that read the base weight (peft 0.21.2's ``init_lora_weights`` values beyond True /
``"gaussian"``): the factors ``A: (r, d_in)``, ``B: (d_out, r)`` and what each takes out of the base weight
``W: (d_out, d_in)``. ``s`` is the LoRA scaling (``alpha / r``, rsLoRA ``alpha / sqrt(r)``).

- ``pissa`` (Meng et al. 2024): ``W = U Σ Vᵀ`` (full SVD); ``A = sqrt(Σ_r / s) V_rᵀ``, ``B = U_r sqrt(Σ_r / s)``
  (the ``r`` largest singular values), base ``W_res = W - s B A``. ``pissa_niter_K``: the same from
  ``torch.svd_lowrank(W, r, niter=K)`` (randomised: draws from the global generator).
- ``olora`` (Büyükakyüz 2024): ``W = Q R``; ``A = R[:r]``, ``B = Q[:, :r]``, base ``W - s B A``.
- ``orthogonal``: ``A = (G₁ Q_odd)ᵀ / 10``, ``B = (G₂ᵀ Q_even) / 10`` with ``Q`` an orthogonal ``(r, r)`` matrix (QR of a
  normal draw) and ``G`` normal draws; ``Q_even Q_oddᵀ = 0`` so ``B A = 0``: the base is unchanged (``r`` even).
- ``loftq`` (Li et al. 2023): alternate ``Q = dequant(quant(W - B A))`` and ``B, A`` = rank-``r`` SVD factors
  (``sqrt`` of the singular values on each side) of ``W - Q``, ``iters`` times; base ``W -> Q``. Quantisation is
  bitsandbytes' NF4 (``bits=4``) or its row-wise int8 (``bits=8``), as peft's ``loftq_init``; like peft, ``A``
  and ``B`` are not divided by ``s`` (``Q + s B A ≈ W`` only for ``s = 1``).

Each function returns ``(A, B, W_new)`` in float32; the caller writes ``W_new`` (cast to the weight's dtype) into
the base.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.spec.configs.low_rank import PISSA_NITER, keeps_initial_factors


def draw_like_peft(d_in: int, d_out: int, r: int) -> None:
    """Consume the global generator as peft's two ``nn.Linear`` constructions do before its initialisation
    (Kaiming-uniform ``(r, d_in)`` then ``(d_out, r)``), so seeded random inits draw the same numbers as peft's."""
    nn.init.kaiming_uniform_(torch.empty(r, d_in), a=math.sqrt(5))
    nn.init.kaiming_uniform_(torch.empty(d_out, r), a=math.sqrt(5))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def require_float_weight(weight: torch.Tensor, init: str, where: str) -> None:
    """Refuse a base weight these inits cannot read (not float32 / float16 / bfloat16, e.g. quantised): the
    initialisation runs on the float model, and the residual model is quantised afterwards."""
    if weight.dtype not in FLOAT_DTYPES:
        raise ConfigError(
            f"init={init!r} reads the base weight of {where}, which is {weight.dtype} (quantised?): "
            "initialise on the float model, then quantise the residual model."
        )


def pissa(weight: torch.Tensor, r: int, scaling: float, init: str) -> tuple[torch.Tensor, ...]:
    """PiSSA factors of ``weight (d_out, d_in)`` and the residual ``W - s B A``."""
    w = weight.detach().float()  # (d_out, d_in)
    match = PISSA_NITER.match(init)
    if match is None:
        u, sv, vh = torch.linalg.svd(w, full_matrices=False)  # (d_out, k), (k,), (k, d_in)
        u_r, s_r, vh_r = u[:, :r], sv[:r] / scaling, vh[:r]
    else:
        u_r, s_r, v_r = torch.svd_lowrank(w, r, niter=int(match.group(1)))  # (d_out, r), (r,), (d_in, r)
        s_r, vh_r = s_r / scaling, v_r.t()
    root = torch.diag(torch.sqrt(s_r))  # (r, r)
    a = root @ vh_r  # (r, d_in)
    b = u_r @ root  # (d_out, r)
    return a, b, w - scaling * b @ a


def olora(weight: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, ...]:
    """OLoRA factors (QR of ``weight``) and the residual ``W - s B A``."""
    w = weight.detach().float()  # (d_out, d_in)
    q, rr = torch.linalg.qr(w)  # (d_out, k), (k, d_in)
    a, b = rr[:r].contiguous(), q[:, :r].contiguous()
    return a, b, w - scaling * b @ a


def orthogonal(d_in: int, d_out: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (r, d_in), B (d_out, r))`` with ``B A = 0`` (peft's ``orthogonal_init``, same draws)."""
    q, _ = torch.linalg.qr(torch.randn(r, r))  # (r, r)
    q_odd, q_even = q[0::2, :], q[1::2, :]  # (r/2, r) each
    a = torch.randn(d_in, r // 2).mm(q_odd).t() / 10.0  # (r, d_in)
    b = torch.randn(r // 2, d_out).t().mm(q_even) / 10.0  # (d_out, r)
    return a.contiguous(), b.contiguous()


def _quantize_dequantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``dequant(quant(weight))`` with bitsandbytes (NF4 without double quantisation, or row-wise int8)."""
    import bitsandbytes as bnb

    if bits == 4:
        q = bnb.nn.Params4bit(
            weight.cpu(), requires_grad=False, compress_statistics=False, quant_type="nf4"
        ).to(weight.device)  # type: ignore[misc]
        return bnb.functional.dequantize_4bit(q.data, q.quant_state).float()
    q8 = bnb.nn.Int8Params(weight.cpu(), requires_grad=False).to(weight.device)  # type: ignore[misc]
    return bnb.functional.int8_vectorwise_dequant(q8.data, q8.SCB).float()


def loftq(weight: torch.Tensor, r: int, bits: int, iters: int) -> tuple[torch.Tensor, ...]:
    """LoftQ factors and the quantised base ``dequant(quant(·))`` of ``weight (d_out, d_in)``."""
    w = weight.detach().float()  # (d_out, d_in)
    residual = w.clone()
    for step in range(iters):
        dequantized = _quantize_dequantize(residual, bits)  # (d_out, d_in)
        u, sv, vh = torch.linalg.svd(w - dequantized, full_matrices=False)
        root = torch.sqrt(torch.diag(sv))  # (k, k)
        b = u @ root[:, :r]  # (d_out, r)
        a = root[:r, :] @ vh  # (r, d_in)
        if step + 1 < iters:
            residual = w - b @ a
    return a, b, dequantized


def base_factors(
    weight: torch.Tensor, init: str, r: int, scaling: float, bits: int, iters: int
) -> tuple[torch.Tensor, ...]:
    """``(A (r, d_in), B (d_out, r), W_new (d_out, d_in))`` of a base-modifying init (``pissa``,
    ``pissa_niter_K``, ``olora``, ``loftq``)."""
    if init == "loftq":
        return loftq(weight, r, bits, iters)
    if init == "olora":
        return olora(weight, r, scaling)
    return pissa(weight, r, scaling, init)


def convert_to_lora(
    config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A PiSSA / OLoRA / CorDA / LoRA-GA adapter as a plain LoRA on the ORIGINAL base (peft's
    ``path_initial_model_for_weight_conversion``): with ``W = W_res + s B0 A0``, the trained adapter computes
    ``W_res + s B A = W + s (B A - B0 A0) = W + s' B' A'`` for ``A' = [A; A0] (2r, d_in)``,
    ``B' = [B, -B0] (d_out, 2r)`` and rank ``2r``, ``alpha' = 2 alpha`` (rsLoRA: ``sqrt(2) alpha``) so that
    ``s' = s``; ``rank_pattern`` / ``alpha_pattern`` values scale alike. Returns the new config dict and tensors
    (without the initial factors)."""
    init = config.get("init", "lora")
    if not keeps_initial_factors(str(init)):
        raise ConfigError(
            f"convert_to_lora turns a PiSSA / OLoRA / CorDA / LoRA-GA adapter into a plain LoRA; this adapter's init is {init!r}"
            + (
                " (LoftQ's base is dequant(quant(W)), not W minus a low-rank part: save it as it is and load it on "
                "the quantised base)."
                if init == "loftq"
                else " (it is a plain LoRA already: save without convert_to_lora)."
            )
        )
    factor = math.sqrt(2.0) if config.get("use_rslora") else 2.0
    out = {key: value for key, value in tensors.items() if not key.endswith((".initial_A", ".initial_B"))}
    for key in tensors:
        if key.endswith(".initial_A"):
            stem = key[: -len("initial_A")]
            a, b = tensors[stem + "lora_A"], tensors[stem + "lora_B"]  # (r, d_in), (d_out, r)
            a0, b0 = tensors[stem + "initial_A"], tensors[stem + "initial_B"]
            out[stem + "lora_A"] = torch.cat([a, a0.to(a.dtype)], dim=0)  # (2r, d_in)
            out[stem + "lora_B"] = torch.cat([b, -b0.to(b.dtype)], dim=1)  # (d_out, 2r)
    converted = {
        **config,
        "init": "lora",
        "r": 2 * int(config["r"]),
        "alpha": factor * float(config["alpha"]),
    }
    for option in (
        "corda_config",
        "lora_ga_config",
    ):  # how the initial factors were found: not part of a plain LoRA
        converted.pop(option, None)
    for option, scale in (("rank_pattern", 2), ("alpha_pattern", factor)):
        pattern = config.get(option)
        if pattern:
            items = pattern.items() if isinstance(pattern, Mapping) else pattern
            converted[option] = {key: type(value)(value * scale) for key, value in items}
    return converted, out
