"""The bottleneck adapter's config (Houlsby et al. 2019; the Pfeiffer and Bapna & Firat placements)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from adapterhub.spec.configs.base import OMIT_DEFAULT, MethodConfig
from adapterhub.spec.configs.checks import (
    check_bool,
    check_choice,
    freeze_per_layer,
    is_number,
    layer_list,
    require,
)

ACTIVATIONS = ("relu", "swish", "silu", "gelu", "gelu_new", "tanh", "sigmoid", "leakyrelu", "identity")
INIT_SCHEMES = ("bert", "houlsby", "mam_adapter")


@dataclass(frozen=True, kw_only=True)
class BottleneckConfig(MethodConfig):
    """Bottleneck adapter ``A(x) = W_up · f(W_down · x + b_down) + b_up`` (Houlsby et al. 2019).

    Placement in a sub-layer that computes ``h = sublayer(input)`` followed by ``LN(h + input)``:

    - ``x = LN(h + input)`` if ``original_ln_before`` else ``x = h``
    - adapter residual ``r = h`` if ``residual_before_ln is True``, ``h + input`` if ``"post_add"``, else ``x``
    - ``y = r + scaling · A(norm_before(x))`` (with ``ln_after``: ``norm_after`` applied before or after adding
      ``r``, by ``adapter_residual_before_ln``)
    - ``out = LN(y + input)`` if ``original_ln_after`` else ``y``.

    In pre-norm models (GPT-2, Llama) the sub-layer has no LayerNorm after it: ``LN`` is the identity there.
    Bottleneck width ``m = hidden_size // reduction_factor`` (or ``bottleneck_size``), per layer if a mapping is
    given (``{"default": 16, "0": 2}``). Parameters per adapter: ``2·m·d + d + m``.
    """

    method: ClassVar[str] = "bottleneck"

    after_attention: bool = False
    after_ffn: bool = True
    reduction_factor: float | tuple[tuple[str, float], ...] = 16
    bottleneck_size: int | None = None
    non_linearity: str = "relu"
    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: bool | str = True
    ln_before: bool = False
    ln_after: bool = False
    adapter_residual_before_ln: bool = False
    scaling: float | str = 1.0
    dropout: float = 0.0
    init_weights: str = "bert"
    leave_out: tuple[int, ...] = field(default_factory=tuple)
    # encoder-decoder models: an adapter after each decoder layer's cross-attention (the `adapters` library's
    # ``cross_adapter``); left out of to_dict while false
    after_cross_attention: bool = field(default=False, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        for name in (
            "after_attention",
            "after_cross_attention",
            "after_ffn",
            "original_ln_before",
            "original_ln_after",
            "ln_before",
            "ln_after",
            "adapter_residual_before_ln",
        ):
            check_bool(name, getattr(self, name))
        require(
            self.after_attention or self.after_ffn or self.after_cross_attention,
            "after_attention, after_cross_attention and after_ffn are all false: the adapter would sit nowhere. "
            "Set at least one.",
        )

        def positive_number(name: str, value: Any) -> None:
            require(is_number(value) and value > 0, f"{name} must be a positive number, got {value!r}.")

        object.__setattr__(
            self,
            "reduction_factor",
            freeze_per_layer("reduction_factor", self.reduction_factor, positive_number),
        )
        if self.bottleneck_size is not None:
            require(
                isinstance(self.bottleneck_size, int)
                and not isinstance(self.bottleneck_size, bool)
                and self.bottleneck_size > 0,
                f"bottleneck_size must be a positive integer or null, got {self.bottleneck_size!r}.",
            )
        check_choice(
            "non_linearity",
            self.non_linearity.lower() if isinstance(self.non_linearity, str) else self.non_linearity,
            ACTIVATIONS,
        )
        object.__setattr__(self, "non_linearity", self.non_linearity.lower())
        require(
            self.residual_before_ln in (True, False, "post_add"),
            f"residual_before_ln must be true, false or 'post_add', got {self.residual_before_ln!r}.",
        )
        require(
            is_number(self.scaling) or self.scaling in ("learned", "channel"),
            f"scaling must be a number, 'learned' or 'channel', got {self.scaling!r}.",
        )
        require(
            is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            f"dropout must be a number in [0, 1), got {self.dropout!r}.",
        )
        check_choice("init_weights", self.init_weights, INIT_SCHEMES)
        object.__setattr__(self, "leave_out", layer_list("leave_out", self.leave_out))
        if is_number(self.scaling):
            object.__setattr__(self, "scaling", float(self.scaling))

    @property
    def sites(self) -> tuple[str, ...]:
        """Where in each layer an adapter sits: ``"attn"``, ``"cross_attn"`` (decoder layers of encoder-decoder
        models) and/or ``"ffn"``."""
        chosen = (
            ("attn", self.after_attention),
            ("cross_attn", self.after_cross_attention),
            ("ffn", self.after_ffn),
        )
        return tuple(s for s, on in chosen if on)

    def reduction_factor_for(self, layer: int) -> float:
        if isinstance(self.reduction_factor, tuple):
            table = dict(self.reduction_factor)
            return float(table.get(str(layer), table["default"]))
        return float(self.reduction_factor)

    def bottleneck_width(self, hidden_size: int, layer: int) -> int:
        """``m`` for this layer; raises ConfigError if the bottleneck would have zero width."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        factor = self.reduction_factor_for(layer)
        width = int(hidden_size // factor)
        require(
            width >= 1,
            f"reduction_factor {factor:g} on hidden size {hidden_size} gives a zero-width bottleneck "
            f"(layer {layer}); use a reduction factor of at most {hidden_size} or set bottleneck_size.",
        )
        return width
