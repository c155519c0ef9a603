"""CorDA's math (Yang et al. 2024, "Context-oriented Decomposition Adaptation"; peft 0.21.2's ``preprocess_corda`` /
``corda_init``): LoRA factors from the SVD of each target's weight times the covariance of its inputs.

Covariance: each forward pass ``t`` through a target gives its inputs ``X_t: (n_t, d_in)`` (every row of the
batch), scaled by its largest entry, ``X̂_t = X_t / |max X_t|``; ``C = (1/T) Σ_t X̂_tᵀ X̂_t`` over the ``T`` passes
(float32, or the inputs' dtype with ``use_float16_for_covariance``).

Decomposition of ``W: (d_out, d_in)``: ``C' = C + λ I`` with ``λ = damp · mean(diag C)``, ``damp`` 0.01 doubled
until ``‖C' C'⁻¹ - I‖_F < 0.05``; ``W C' = U Σ Vᵀ`` (full SVD) and ``V' = C'⁻¹ V``, so ``U Σ V'ᵀ = W``. ``ipm``
keeps the ``r`` largest singular values, ``kpm`` the ``r`` smallest; with ``s`` the LoRA scaling,
``A = sqrt(Σ_r / s) V'_rᵀ: (r, d_in)``, ``B = U_r sqrt(Σ_r / s): (d_out, r)``, and the base becomes
``W - s B A``.
"""

from __future__ import annotations

import torch

from adapterhub.errors import ConfigError

DAMP = 0.01  # peft's first damping factor
INVERSE_TOLERANCE = 0.05  # peft: ‖C' C'⁻¹ - I‖_F below this accepts the damping


def scaled_gram(x: torch.Tensor, float16: bool, name: str) -> torch.Tensor:
    """``X̂ᵀ X̂`` of one pass's inputs ``x: (n, d_in)``, ``X̂ = x / |max x|``: ``(d_in, d_in)`` (float32 unless
    ``float16``: then ``x``'s dtype)."""
    x = x.detach() if float16 else x.detach().float()
    x = x / torch.max(x).abs()
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(
            f"CorDA: the inputs of {name} hold NaN / inf (or are all zero) in a batch; check the data the covariance "
            "pass reads."
        )
    return x.t() @ x  # (d_in, d_in)


def corda_factors(
    weight: torch.Tensor, covariance: torch.Tensor, r: int, scaling: float, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (r, d_in), B (d_out, r))`` of ``weight (d_out, d_in)`` and its input ``covariance (d_in, d_in)``
    (float32); the base's residual is ``W - s B A``."""
    w = weight.detach().float()  # (d_out, d_in)
    if r > min(w.shape):
        raise ConfigError(f"CorDA: rank {r} exceeds min(d_out, d_in) = {min(w.shape)} of a target; lower r.")
    cov = covariance.float()  # (d_in, d_in)
    eye = torch.eye(cov.shape[0], device=cov.device)
    damp = DAMP
    while True:
        fixed = cov + eye * torch.mean(torch.diag(cov)) * damp  # (d_in, d_in)
        inverse = torch.linalg.inv(fixed)
        if torch.dist(fixed @ inverse, eye).item() < INVERSE_TOLERANCE:
            break
        damp *= 2
    u, sv, vh = torch.linalg.svd(w @ fixed, full_matrices=False)  # (d_out, k), (k,), (k, d_in)
    v = (vh @ inverse).t()  # (d_in, k)
    keep = slice(None, r) if method == "ipm" else slice(-r, None)
    u_r, s_r, v_r = u[:, keep], sv[keep] / scaling, v[:, keep]  # (d_out, r), (r,), (d_in, r)
    if not all(bool(torch.isfinite(t).all()) for t in (u_r, s_r, v_r)):
        raise ConfigError(
            "CorDA's decomposition gave NaN / inf; the covariance is degenerate (give more data)."
        )
    root = s_r.sqrt()  # (r,)
    a = (v_r.t() * root.view(-1, 1)).contiguous()  # (r, d_in)
    b = (u_r * root).contiguous()  # (d_out, r)
    return a, b
