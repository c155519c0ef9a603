"""Compacter and Compacter++ (Mahabadi et al. 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers").

A bottleneck adapter whose down and up projections are PHM layers: ``y = x · H + b`` with

    H = Σ_{i<n} A_i ⊗ B_i,   A_i ∈ R^{n×n} (the "rule"),  B_i = W_left_i · W_right_i ∈ R^{(d_in/n)×(d_out/n)}

(``n = phm_dim``, ``W_left_i: (d_in/n, r)``, ``W_right_i: (r, d_out/n)``, ``r = phm_rank``; with
``factorized_phm_W=False`` ``B_i`` is one ``W_i``). With ``shared_phm_rule`` one rule tensor ``(n, n, n)`` per
adapter serves all its PHM layers (the down and up projections of every layer). This is what the `adapters`
library's ``PHMLayer`` computes (``kronecker_product(phm_rule, W).sum(0)``, then ``x @ H + b``); placement is
that of a sequential bottleneck adapter (``BottleneckConfig``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import ModelDims, register_method
from adapterhub.methods.bottleneck import BottleneckAdapter, BottleneckLayer
from adapterhub.spec.configs import PRESET_ALIASES, BottleneckConfig, register_config

W_INITS = ("glorot-normal", "glorot-uniform", "normal", "phm")
C_INITS = ("normal", "uniform")


@dataclass(frozen=True, kw_only=True)
class CompacterConfig(BottleneckConfig):
    """Compacter (defaults: the `adapters` library's ``CompacterConfig``: after attention and FFN, Houlsby
    placement, reduction factor 32, GELU). PHM options as in that library:

    - ``phm_dim`` ``n``: number of Kronecker summands; ``d`` and the bottleneck width must be divisible by it;
    - ``phm_rank``: rank of ``W_left · W_right`` when ``factorized_phm_W`` (else a full ``W``);
    - ``shared_phm_rule``: one rule tensor per adapter for all layers (else one per PHM layer);
      ``factorized_phm_rule``: the rule as ``rule_left (n,n,1) · rule_right (n,1,n)``; ``learn_phm``: train it;
    - ``phm_c_init`` (``normal``/``uniform``), ``phm_init_range``: rule init (shared: N(0, range) or U(-1, 1);
      per layer: N(0, 0.01) or U(-0.01, 0.01), as that library does);
    - ``hypercomplex_nonlinearity``: init of ``W`` (``glorot-normal``, ``glorot-uniform``, ``normal`` with
      ``phm_init_range``; ``phm`` = glorot-normal);
    - ``phm_bias``: a bias ``b`` in each PHM layer.

    ``shared_W_phm`` (one W for all layers) is not supported; ``init_weights`` must be ``bert`` (the PHM
    layers' own init, as in that library, whose other schemes fail on PHM layers).
    """

    method: ClassVar[str] = "compacter"

    after_attention: bool = True
    reduction_factor: float | tuple[tuple[str, float], ...] = 32
    non_linearity: str = "gelu"
    original_ln_before: bool = False
    phm_dim: int = 4
    phm_rank: int = 1
    factorized_phm_W: bool = True
    shared_W_phm: bool = False
    shared_phm_rule: bool = True
    factorized_phm_rule: bool = False
    learn_phm: bool = True
    phm_c_init: str = "normal"
    phm_init_range: float = 0.0001
    hypercomplex_nonlinearity: str = "glorot-uniform"
    phm_bias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("factorized_phm_W", "shared_phm_rule", "factorized_phm_rule", "learn_phm", "phm_bias"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}.")
        for name in ("phm_dim", "phm_rank"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.shared_W_phm is not False:
            raise ConfigError("shared_W_phm=True (one W for all layers) is not supported; leave it false.")
        if self.phm_c_init not in C_INITS:
            raise ConfigError(
                f"phm_c_init={self.phm_c_init!r} is not valid; choose one of {', '.join(C_INITS)}."
            )
        if self.hypercomplex_nonlinearity not in W_INITS:
            raise ConfigError(
                f"hypercomplex_nonlinearity={self.hypercomplex_nonlinearity!r} is not valid; choose one of "
                f"{', '.join(W_INITS)}."
            )
        ok = isinstance(self.phm_init_range, (int, float)) and not isinstance(self.phm_init_range, bool)
        if not ok or not math.isfinite(self.phm_init_range) or self.phm_init_range <= 0:
            raise ConfigError(f"phm_init_range must be a positive number, got {self.phm_init_range!r}.")
        object.__setattr__(self, "phm_init_range", float(self.phm_init_range))
        if self.init_weights != "bert":
            raise ConfigError(
                f"init_weights={self.init_weights!r} does not apply to Compacter: its PHM layers have their own "
                "init (hypercomplex_nonlinearity, phm_c_init); leave init_weights at 'bert'."
            )


def compacter_plus_plus() -> CompacterConfig:
    """Compacter++: only after the FFN, Pfeiffer placement (the `adapters` library's ``CompacterPlusPlusConfig``)."""
    return CompacterConfig(after_attention=False, original_ln_before=True)


register_config(CompacterConfig, {"compacter": CompacterConfig, "compacter++": compacter_plus_plus})
PRESET_ALIASES.setdefault("compacterpp", "compacter++")


def new_rule(config: CompacterConfig, shared: bool) -> dict[str, nn.Parameter]:
    """The rule parameters (``phm_rule`` ``(n,n,n)``, or ``phm_rule_left`` ``(n,n,1)`` / ``phm_rule_right``
    ``(n,1,n)``), initialised as that library does for a shared or a per-layer rule."""
    n = config.phm_dim
    shapes = (
        {"phm_rule_left": (n, n, 1), "phm_rule_right": (n, 1, n)}
        if config.factorized_phm_rule
        else {"phm_rule": (n, n, n)}
    )
    out = {}
    for key, shape in shapes.items():
        tensor = torch.empty(shape)
        if config.phm_c_init == "normal":
            tensor.normal_(0.0, config.phm_init_range if shared else 0.01)
        else:
            bound = 1.0 if shared else 0.01
            tensor.uniform_(-bound, bound)
        out[key] = nn.Parameter(tensor, requires_grad=config.learn_phm)
    return out


def rule_of(params: nn.ParameterDict | nn.Module) -> torch.Tensor:
    """The ``(n, n, n)`` rule from its parameters (``phm_rule`` or ``phm_rule_left · phm_rule_right``)."""
    if hasattr(params, "phm_rule") or (isinstance(params, nn.ParameterDict) and "phm_rule" in params):
        return params["phm_rule"] if isinstance(params, nn.ParameterDict) else params.phm_rule  # type: ignore[return-value]
    left = params["phm_rule_left"] if isinstance(params, nn.ParameterDict) else params.phm_rule_left
    right = params["phm_rule_right"] if isinstance(params, nn.ParameterDict) else params.phm_rule_right
    return torch.bmm(left, right)  # type: ignore[arg-type]


class PHMLinear(nn.Module):
    """``y = x · H + b`` with ``H = Σ_i rule_i ⊗ W_i`` ``(d_in, d_out)``. Parameters (names as in the `adapters`
    library): ``W_left`` / ``W_right`` (or ``W``), ``b``, and ``phm_rule`` (or ``phm_rule_left`` /
    ``phm_rule_right``) unless the rule is shared, in which case ``shared`` (not registered here) holds it.

    ``weight`` ``(d_out, d_in)`` and ``bias`` ``(d_out,)`` are computed, so that code written for ``nn.Linear``
    (batched BatchSplit and Fuse in ``methods/bottleneck.py``) runs on PHM layers too."""

    def __init__(
        self, d_in: int, d_out: int, config: CompacterConfig, shared: nn.ParameterDict | None
    ) -> None:
        super().__init__()
        n = config.phm_dim
        if d_in % n or d_out % n:
            raise ConfigError(
                f"Compacter needs the hidden size and the bottleneck width divisible by phm_dim={n}, got "
                f"{d_in} -> {d_out}; change phm_dim or reduction_factor."
            )
        self.config = config
        self.in_features, self.out_features = d_in, d_out
        a, b = d_in // n, d_out // n
        if config.factorized_phm_W:
            self.W_left = nn.Parameter(torch.empty(n, a, config.phm_rank))
            self.W_right = nn.Parameter(torch.empty(n, config.phm_rank, b))
        else:
            self.W = nn.Parameter(torch.empty(n, a, b))
        self.b = nn.Parameter(torch.zeros(d_out)) if config.phm_bias else None
        if shared is None:
            for key, param in new_rule(config, shared=False).items():
                self.register_parameter(key, param)
        # the adapter's shared rule: referenced, not registered (it is saved once, at the adapter)
        object.__setattr__(self, "_shared", shared)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        scheme = self.config.hypercomplex_nonlinearity
        with torch.no_grad():
            factors = [self.W_left, self.W_right] if self.config.factorized_phm_W else [self.W]
            for factor in factors:
                for i in range(factor.shape[0]):
                    if scheme == "glorot-uniform":
                        nn.init.xavier_uniform_(factor[i])
                    elif scheme == "normal":
                        factor[i].normal_(0.0, self.config.phm_init_range)
                    else:
                        nn.init.xavier_normal_(factor[i])
            if self.b is not None:
                self.b.zero_()

    def rule(self) -> torch.Tensor:
        shared: nn.ParameterDict | None = self._shared  # type: ignore[assignment]
        return rule_of(shared if shared is not None else self)

    def kernel(self) -> torch.Tensor:
        """``H = Σ_i rule_i ⊗ W_i``, ``(d_in, d_out)``."""
        w = torch.bmm(self.W_left, self.W_right) if self.config.factorized_phm_W else self.W  # (n, a, b)
        rule = self.rule()  # (n, n, n)
        n, a, b = w.shape
        # kron(rule_i, w_i)[p·a + q, s·b + t] = rule_i[p, s] · w_i[q, t]
        h = torch.einsum("ips,iqt->pqst", rule, w)  # (n, a, n, b)
        return h.reshape(n * a, n * b)

    @property
    def weight(self) -> torch.Tensor:
        return self.kernel().t()

    @property
    def bias(self) -> torch.Tensor:
        if self.b is not None:
            return self.b
        return (
            self.W_left.new_zeros(self.out_features)
            if self.config.factorized_phm_W
            else self.W.new_zeros(self.out_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.kernel())
        return y + self.b if self.b is not None else y


class CompacterLayer(BottleneckLayer):
    """A bottleneck layer whose ``down`` / ``up`` are ``PHMLinear``."""

    def __init__(
        self, hidden_size: int, width: int, config: CompacterConfig, shared: nn.ParameterDict | None
    ) -> None:
        def phm(d_in: int, d_out: int) -> nn.Module:
            return PHMLinear(d_in, d_out, config, shared)

        super().__init__(hidden_size, width, config, linear=phm)

    def reset_parameters(self) -> None:
        self.down.reset_parameters()
        self.up.reset_parameters()


@register_method("compacter")
class CompacterAdapter(BottleneckAdapter):
    """Compacter adapters over all layers: ``layers[str(i)][site]`` is a ``CompacterLayer``; with
    ``shared_phm_rule`` the adapter's one rule is ``shared.phm_rule`` (or ``shared.phm_rule_left`` /
    ``shared.phm_rule_right``). Composition as bottleneck adapters (Stack, Fuse, Split, BatchSplit, ...)."""

    config_cls = CompacterConfig  # type: ignore[assignment]
    config: CompacterConfig

    def __init__(self, name: str, config: CompacterConfig, dims: ModelDims) -> None:
        shared = nn.ParameterDict(new_rule(config, shared=True)) if config.shared_phm_rule else None
        object.__setattr__(self, "_pending_shared", shared)  # read by make_layer during __init__
        super().__init__(name, config, dims)
        object.__delattr__(self, "_pending_shared")
        if shared is not None:
            self.shared = shared

    def make_layer(
        self, hidden_size: int, width: int, config: BottleneckConfig, *, initialise: bool = True
    ) -> BottleneckLayer:
        if not initialise:  # never asked: init_on_load is True here (build_for_load reads each class's own)
            raise ConfigError(f"{type(self).__name__} builds its layers initialised only.")
        return CompacterLayer(hidden_size, width, config, self._pending_shared)  # type: ignore[arg-type]
