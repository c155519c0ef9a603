"""LoRA-GA's math (Wang et al. 2024, "LoRA-GA: Low-Rank Adaptation with Gradient Approximation"; peft 0.21.2's
``preprocess_loraga`` / ``lora_ga_init``): LoRA factors from the SVD of each target's weight gradient, so that the
first step of LoRA moves the weight as the first step of full fine-tuning would.

Gradient: ``G = (1/T) Σ_t ∂L_t/∂W: (d_out, d_in)``, the loss's gradient summed over ``T`` batches (the model in
training mode, only the targets' weights requiring grad) divided by the number of forward calls through the target.

Factors: ``G ≈ U diag(S) Vᵀ`` from ``torch.svd_lowrank(G, q=min(4r, min(d_out, d_in)), niter=4)`` (randomised: it
draws from the global generator), of which the first ``2r`` components are kept. ``direction`` splits them:
``ArB2r``: ``A = V[:, :r]ᵀ``, ``B = U[:, r:2r] diag(S[r:2r])``; ``A2rBr``: ``A = V[:, r:2r]ᵀ``,
``B = U[:, :r] diag(S[:r])``; ``ArBr``: ``A`` the odd components, ``B`` the even ones; ``random``: the same random
``r`` of the ``2r`` for both (``torch.randperm``). ``scale``: ``stable``: ``B · rows^¼ / sqrt(stable_gamma)``
(``rows`` the stored weight's first dimension: ``d_out``, ``d_in`` for a GPT-2 ``Conv1D``, as peft);
``weight_svd``: ``B · σ₁(W) / S_B[0]`` (``σ₁`` from ``torch.svd_lowrank(W, q=r, niter=4)``), when ``S_B[0] > 0``;
``gd_scale``: ``A / s``, ``B / s``; ``unit``: as they are. The base becomes ``W - s B A``.
"""

from __future__ import annotations

import torch

from adapterhub.errors import ConfigError
from adapterhub.spec.configs.data_inits import LoraGAConfig

SVD_NITER = 4  # peft's niter for both randomised SVDs


def lora_ga_factors(
    grad: torch.Tensor,
    weight: torch.Tensor,
    r: int,
    scaling: float,
    options: LoraGAConfig,
    rows: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (r, d_in), B (d_out, r))`` in ``dtype`` from the averaged gradient ``grad (d_out, d_in)`` of the target's
    ``weight (d_out, d_in)``; ``rows``: the stored weight's first dimension (``stable`` scale)."""
    g = grad.float()  # (d_out, d_in)
    if 2 * r > min(g.shape):
        raise ConfigError(
            f"LoRA-GA: 2r = {2 * r} gradient components exceed min(d_out, d_in) = {min(g.shape)} of a target; "
            "lower r."
        )
    u, s, v = torch.svd_lowrank(g, q=min(4 * r, min(g.shape)), niter=SVD_NITER)  # (d_out, q), (q,), (d_in, q)
    u, s, vh = u[:, : 2 * r], s[: 2 * r], v.t()[: 2 * r]  # (d_out, 2r), (2r,), (2r, d_in)
    direction = options.direction
    if direction == "ArBr":
        a_index, b_index = torch.arange(1, 2 * r, 2), torch.arange(0, 2 * r, 2)
    elif direction == "A2rBr":
        a_index, b_index = torch.arange(r, 2 * r), torch.arange(0, r)
    elif direction == "ArB2r":
        a_index, b_index = torch.arange(0, r), torch.arange(r, 2 * r)
    else:  # random
        a_index = b_index = torch.randperm(2 * r)[:r]
    s_b = s[b_index]  # (r,)
    a = vh[a_index]  # (r, d_in)
    b = u[:, b_index] @ torch.diag(s_b)  # (d_out, r)
    if options.scale == "stable":
        b = b * (rows**0.25 / options.stable_gamma**0.5)
    elif options.scale == "weight_svd":
        _, weight_s, _ = torch.svd_lowrank(weight.detach().float(), q=r, niter=SVD_NITER)
        if s_b[0] > 0:
            b = b * (weight_s[0] / s_b[0])
    elif options.scale == "gd_scale":
        a, b = a / scaling, b / scaling
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()
