"""AdaLoRA's rank allocator (peft's ``RankAllocator``, peft 0.21): importance scores of the singular values of every
target of one adapter, the budget schedule, and the masking of ``E``.

Importance per entry ``w`` of ``A``, ``B``, ``E`` (after each optimizer step, with that step's gradients)::

    I = |w · g|      Ī ← β1 Ī + (1 - β1) I      Ū ← β2 Ū + (1 - β2) |I - Ī|      s = Ī · Ū

The score of singular value ``i`` of a target: ``s(E_i) + (mean_j s(A_ij) + mean_j s(B_ji))``. Masking to a budget
``b`` (singular values kept over all targets, out of ``init_bgt = Σ r``): the ``k = init_bgt - b``-th smallest
score over all targets is the threshold ``τ``, and every ``E_i`` whose score is ``<= τ`` is set to zero (ties may
zero more than ``k``, as peft).

Budget at step ``t`` (``T = total_step``): ``init_bgt`` for ``t <= tinit`` (no masking); the target budget
``target_r · targets`` for ``t > T - tfinal``; in between ``int((init_bgt - target_bgt) · (1 - (t - tinit) /
(T - tfinal - tinit))³ + target_bgt)``, masking when ``t % deltaT == 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from adapterhub.spec.configs import AdaLoraConfig

PARAMS = ("lora_A", "lora_B", "lora_E")


class Site(Protocol):
    """What the allocator reads of a target: its factors ``A (r, d_in)``, ``B (d_out, r)``, ``E (r, 1)``."""

    @property
    def lora_A(self) -> torch.Tensor: ...

    @property
    def lora_B(self) -> torch.Tensor: ...

    @property
    def lora_E(self) -> torch.Tensor: ...


class RankAllocator:
    """The allocator's running state for one adapter: ``Ī`` and ``Ū`` per ``(target, parameter)``. It is training
    state, kept on the adapter (not saved); ``reset`` clears it (peft's ``reset_ipt`` after the final masking)."""

    def __init__(self) -> None:
        self.exp_avg_ipt: dict[tuple[str, str], torch.Tensor] = {}
        self.exp_avg_unc: dict[tuple[str, str], torch.Tensor] = {}

    def reset(self) -> None:
        self.exp_avg_ipt.clear()
        self.exp_avg_unc.clear()

    @torch.no_grad()
    def update(self, sites: Mapping[str, Site], config: AdaLoraConfig) -> None:
        """Fold this step's ``|w · g|`` of every ``lora_A`` / ``lora_B`` / ``lora_E`` into ``Ī`` and ``Ū``."""
        for key, site in sites.items():
            for name in PARAMS:
                param: torch.Tensor = getattr(site, name)
                if param.grad is None:
                    raise RuntimeError(
                        f"AdaLoRA's rank allocator needs the gradient of {name} of {key!r}, but it has none: "
                        "call it after backward and the optimizer step, before the gradients are zeroed, on an "
                        "adapter that took part in the forward pass."
                    )
                ipt = (param * param.grad).abs()
                slot = (key, name)
                avg = self.exp_avg_ipt.get(slot, torch.zeros_like(param))
                unc = self.exp_avg_unc.get(slot, torch.zeros_like(param))
                avg = config.beta1 * avg + (1 - config.beta1) * ipt
                self.exp_avg_ipt[slot] = avg
                self.exp_avg_unc[slot] = config.beta2 * unc + (1 - config.beta2) * (ipt - avg).abs()

    def scores(self, sites: Mapping[str, Site]) -> dict[str, torch.Tensor]:
        """The score of each singular value per target: ``(r,)``."""
        out = {}
        for key in sites:
            score = {name: self.exp_avg_ipt[(key, name)] * self.exp_avg_unc[(key, name)] for name in PARAMS}
            a = score["lora_A"].mean(dim=1)  # (r, d_in) -> (r,)
            b = score["lora_B"].mean(dim=0)  # (d_out, r) -> (r,)
            out[key] = score["lora_E"].view(-1) + (a + b)  # (r,)
        return out

    @torch.no_grad()
    def mask_to_budget(self, sites: Mapping[str, Site], budget: int) -> dict[str, tuple[bool, ...]]:
        """Zero the ``E`` entries of the lowest scores down to ``budget`` kept values over all targets; returns
        which are kept per target (the new ``rank_pattern``)."""
        scores = self.scores(sites)
        total = sum(int(site.lora_E.shape[0]) for site in sites.values())
        k = total - budget
        if k <= 0:  # target_r == init_r: nothing to remove
            return {key: (True,) * int(score.numel()) for key, score in scores.items()}
        threshold = torch.kthvalue(torch.cat(list(scores.values())), k=k)[0].item()
        kept: dict[str, tuple[bool, ...]] = {}
        for key, site in sites.items():
            drop = scores[key] <= threshold  # (r,)
            site.lora_E.masked_fill_(drop.view(-1, 1), 0.0)
            kept[key] = tuple(bool(v) for v in (~drop).tolist())
        return kept


def budget_schedule(config: AdaLoraConfig, step: int, total_step: int, targets: int) -> tuple[int, bool]:
    """``(budget, mask now)`` at ``step`` of a run of ``total_step`` steps with ``targets`` targets."""
    init_bgt = config.init_r * targets
    target_bgt = config.target_r * targets
    if step <= config.tinit:
        return init_bgt, False
    if step > total_step - config.tfinal:
        return target_bgt, True
    coeff = 1 - (step - config.tinit) / (total_step - config.tfinal - config.tinit)
    return int((init_bgt - target_bgt) * (coeff**3) + target_bgt), step % config.deltaT == 0


@torch.no_grad()
def apply_masks(sites: Mapping[str, Site], rank_pattern: Mapping[str, tuple[bool, ...]]) -> None:
    """Zero the ``E`` entries ``rank_pattern`` does not keep (the final phase, and an adapter loaded with one)."""
    for key, site in sites.items():
        mask = rank_pattern.get(key)
        if mask is None:
            raise RuntimeError(f"AdaLoRA's rank_pattern has no entry for target {key!r}.")
        keep = torch.tensor(mask, device=site.lora_E.device).view(-1, 1)
        site.lora_E.masked_fill_(~keep, 0.0)
