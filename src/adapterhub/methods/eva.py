"""EVA's math (Paischer et al. 2024; peft 0.21.2's ``initialize_lora_eva_weights``): the principal directions of
each LoRA target's inputs, found by incremental SVD over batches, and ranks redistributed by explained variance.

For a target with inputs ``X_t: (n_t, d_in)`` (the rows of batch ``t`` kept by the masks), an ``IncrementalSVD``
keeps the mean ``μ``, the per-feature variance and the top ``k`` right singular vectors ``V_k`` with singular values
``σ_k`` of the centred data seen so far (Ross et al. 2008, sklearn's ``IncrementalPCA``). One step stacks
``[diag(σ_k) V_kᵀ; X_t - mean(X_t); sqrt(n n_t / (n + n_t)) (μ - mean(X_t))]`` and takes its SVD (randomised,
``torch.svd_lowrank`` with ``q = 2k``, 4 iterations, seed 42, as peft), signs fixed so that each row's largest
entry is positive. The explained variance ratio of component ``i`` is ``σ_i² / Σ_features n · var``.

A component has converged when its cosine similarity with the previous step's is ≥ ``tau``. Ranks: the
``Σ r`` largest ratios over all targets (each target offering its first ``round(r · rho)``) give each target as many
ranks as it has among them; ``A`` of a target of rank ``r'`` is its first ``r'`` components (``whiten``: divided by
``sqrt(σ)``). Targets whose inputs are equal share one SVD.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import torch

from adapterhub.errors import ConfigError

SVD_SEED = 42  # peft's lowrank_seed
SVD_NITER = 4  # peft's lowrank_niter


class IncrementalSVD:
    """Incremental SVD of the rows fed to ``update`` (float64 statistics, as peft's ``IncrementalPCA`` in its
    low-rank mode)."""

    def __init__(self, n_components: int, name: str) -> None:
        self.k, self.name = n_components, name
        self.components: torch.Tensor | None = None  # (k, d)
        self.singular_values: torch.Tensor | None = None  # (k,)
        self.ratio: torch.Tensor | None = None  # (k,) explained variance ratio
        self._mean: torch.Tensor | None = None  # (d,) float64
        self._var: torch.Tensor | None = None  # (d,) float64
        self._seen = torch.tensor([0])

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and variance of all rows seen, ``x (n, d)`` included (Chan et al.'s pairwise update)."""
        n_new = torch.tensor([x.shape[0]], device=x.device)
        total = self._seen + n_new
        old_sum = (
            torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            if self._mean is None
            else self._mean * self._seen
        )
        new_sum = x.sum(dim=0, dtype=torch.float64)  # (d,)
        mean = (old_sum + new_sum) / total
        centred = x - new_sum / n_new  # (n, d) float64
        correction = centred.sum(dim=0, dtype=torch.float64).square()
        new_ss = centred.square().sum(dim=0, dtype=torch.float64) - correction / n_new  # (d,)
        if self._var is None:
            return mean, new_ss / total, total
        ratio = self._seen.double() / n_new
        ss = self._var * self._seen + new_ss + ratio / total * (old_sum / ratio - new_sum).square()
        return mean, ss / total, total

    def update(self, x: torch.Tensor) -> None:
        """One step over ``x: (n, d)`` (float32, ``n ≥ k``)."""
        n, d = x.shape
        if self.k > d:
            raise ConfigError(
                f"EVA at {self.name}: round(r * rho) = {self.k} components exceed the input width {d}; lower r or "
                "eva_config rho."
            )
        x = x.clone()
        mean, var, total = self._moments(x)
        if self.components is None:
            x -= mean
        else:
            assert self.singular_values is not None and self._mean is not None
            batch_mean = x.mean(dim=0)  # (d,)
            x -= batch_mean
            factor = torch.sqrt((self._seen.double() / total) * n)
            shift = factor * (self._mean - batch_mean)  # (d,)
            x = torch.vstack((self.singular_values.view(-1, 1) * self.components, x, shift))  # (k + n + 1, d)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(SVD_SEED)
            _, s, v = torch.svd_lowrank(x, q=2 * self.k, niter=SVD_NITER)  # v: (d, q)
        vt = v.mH  # (q, d)
        largest = torch.argmax(vt.abs(), dim=1)
        vt = vt * torch.sign(vt[torch.arange(vt.shape[0]), largest]).view(-1, 1)
        self._seen, self._mean, self._var = total, mean, var
        self.components = vt[: self.k]
        self.singular_values = s[: self.k]
        self.ratio = (s**2 / torch.sum(var * total))[: self.k]


class TargetSVD:
    """The SVD of one group of targets with equal inputs, and which of its components have converged."""

    def __init__(self, n_components: int, tau: float, name: str) -> None:
        self.svd = IncrementalSVD(n_components, name)
        self.tau = tau
        self.converged = torch.zeros(n_components, dtype=torch.bool)  # (k,)

    def update(self, rows: torch.Tensor) -> None:
        """A step over ``rows: (n, d)``; skipped when ``n < k`` (as peft)."""
        if rows.shape[0] < self.svd.k:
            return
        previous = None if self.svd.components is None else self.svd.components.clone()
        self.svd.update(rows.to(torch.float32))
        if previous is not None:
            assert self.svd.components is not None
            similarity = torch.nn.functional.cosine_similarity(self.svd.components, previous)  # (k,)
            self.converged = similarity >= self.tau

    @property
    def started(self) -> bool:
        return self.svd.components is not None


def equal_groups(names: Sequence[str], rows: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{target: representative}`` for targets whose first-batch ``rows`` equal an earlier target's (the first
    of each group in ``names`` order represents it)."""
    groups: list[list[str]] = []
    for name in names:
        for group in groups:
            first = rows[group[0]]
            if first.shape == rows[name].shape and torch.equal(first, rows[name]):
                group.append(name)
                break
        else:
            groups.append([name])
    return {member: group[0] for group in groups for member in group[1:]}


def distribute_ranks(
    ratios: Mapping[str, torch.Tensor],
    layer_map: Mapping[str, str],
    equal_map: Mapping[str, str],
    budget: int,
    max_components: Mapping[str, int],
) -> dict[str, int]:
    """Each target's rank: how many of the ``budget`` largest explained variance ratios are its own (each target
    offers the first ``max_components`` of its representative's, in ``layer_map`` order); then, within each group
    of equal inputs, the representative takes the larger rank of itself and each member (peft's order of ties)."""
    keys = [name for name, rep in layer_map.items() for _ in ratios[rep][: max_components[name]]]
    values = [c for name, rep in layer_map.items() for c in ratios[rep][: max_components[name]]]
    order = torch.stack(values).argsort(descending=True)  # (Σ offered,)
    counted = Counter(keys[int(i)] for i in order[:budget])
    ranks = {name: counted.get(name, 0) for name in layer_map}
    for member, rep in equal_map.items():
        if ranks[rep] < ranks[member]:
            ranks[rep], ranks[member] = ranks[member], ranks[rep]
    return ranks
