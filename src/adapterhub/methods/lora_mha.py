"""LoRA on ``nn.MultiheadAttention`` targeted by name (peft's ``lora.MultiheadAttention``).

``nn.MultiheadAttention`` holds its input projection as one parameter ``in_proj_weight`` ``(3E, E)`` (the rows of
q, k and v) and calls neither it nor its ``out_proj`` as a module, so no per-projection hook can add an update.
As peft does, LoRA changes both weights and runs the attention with them::

    W_in'  = W_in  + s · B_in A_in        A_in (r, E),  B_in (3E, r)
    W_out' = W_out + s · B_out A_out      A_out (r, E), B_out (E, r)
    output = MultiheadAttention(query, key, value, ...) computed with W_in', W_out' (the module's own biases,
             bias_k / bias_v, dropout and masks)

``s`` is LoRA's scaling (``alpha / r``, rsLoRA ``alpha / sqrt(r)``); LoRA's dropout does not apply (the update is a
change of weights, as in peft). The two updates are two LoRA targets of the adapter: the module's path (``in_proj``)
and ``<path>.out_proj``; merging adds them to ``in_proj_weight`` and ``out_proj.weight``.

The point ``("module", path)`` gets ``AttentionModuleInputs``: a Stack's running value is the sum of its adapters'
weight updates (``AttentionDeltas``), and the attention runs once with them when the Stack ends. Blocks that split
rows or positions, or average outputs, do not apply (the runtime's hook refuses them by name).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import NamedModule
from adapterhub.methods.lora_layers import LoRALayer
from adapterhub.methods.point_inputs import PointInputs
from adapterhub.spec.configs import LoRAConfig

OUT_PROJ = "out_proj"  # the output projection's name inside nn.MultiheadAttention (and in peft's keys)
_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


@dataclass(frozen=True)
class AttentionDeltas:
    """A Stack's running value at a ``MultiheadAttention``: the summed updates ``ΔW_in`` ``(3E, E)`` and
    ``ΔW_out`` ``(E, E)`` of the adapters so far (None: none yet)."""

    in_proj: torch.Tensor | None = None
    out_proj: torch.Tensor | None = None

    def plus(self, in_proj: torch.Tensor, out_proj: torch.Tensor) -> AttentionDeltas:
        return AttentionDeltas(
            in_proj if self.in_proj is None else self.in_proj + in_proj,
            out_proj if self.out_proj is None else self.out_proj + out_proj,
        )


@dataclass
class AttentionModuleInputs(PointInputs):
    """An ``nn.MultiheadAttention`` targeted by name: ``module`` it, ``arguments`` its call's arguments by name
    (``query``, ``key``, ``value``, ``key_padding_mask``, ``need_weights``, ``attn_mask``, ``average_attn_weights``,
    ``is_causal``), ``output`` what it returned, ``(attn_output, attn_weights or None)``."""

    module: nn.MultiheadAttention
    arguments: dict[str, Any]
    output: Any

    @classmethod
    def of_call(
        cls, module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> AttentionModuleInputs:
        bound = _SIGNATURE.bind(module, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        return cls(module, arguments, output)

    def base(self) -> Any:
        return self.output

    def start(self) -> AttentionDeltas:
        return AttentionDeltas()

    def finish(self, running: Any) -> Any:
        if running.in_proj is None:
            return self.output
        return attention_with(self.module, running.in_proj, running.out_proj, self.arguments)

    def on(self, running: Any) -> PointInputs:
        raise self._refused("a block after a Stack")

    def select(self, index: slice, dim: int) -> PointInputs:
        raise self._refused("Split / BatchSplit / Parallel")

    def join(self, parts: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        raise self._refused("Split / BatchSplit / Parallel")

    def batch_size(self) -> int:
        raise self._refused("BatchSplit / Parallel")

    def length(self) -> int:
        raise self._refused("Split")

    @staticmethod
    def _refused(what: str) -> ConfigError:
        return refused_block(what)


def attention_layers(
    module: NamedModule, config: LoRAConfig, r: int, alpha: float, *, initialise: bool = True
) -> LoRALayer:
    """The in_proj update of the ``nn.MultiheadAttention`` ``module``: a ``LoRALayer`` ``E -> 3E`` (peft's
    ``lora_A`` ``(r, E)``, ``lora_B`` ``(3E, r)``, initialised as a Linear's). Refuses the inits that read or change
    the base weight (peft's MultiheadAttention LoRA merges its factors into the weights it reads at each call)."""
    if config.init not in ("lora", "gaussian"):
        raise ConfigError(
            f"init={config.init!r} is implemented for linear targets only, not for the nn.MultiheadAttention target "
            f"{module.path}; use init='lora' or 'gaussian', or leave it out of target_modules."
        )
    return LoRALayer(module.d_in, module.d_out, config, r, alpha, initialise=initialise)


def refused_block(what: str) -> ConfigError:
    """The error for a composition block a ``MultiheadAttention`` target cannot run under."""
    return ConfigError(
        f"LoRA on an nn.MultiheadAttention changes its weights for the whole call, so {what} cannot apply it to "
        "parts of the batch; activate its adapters alone or in a Stack of adapter names (their updates add), or "
        "leave the MultiheadAttention out of target_modules."
    )


def attention_with(
    module: nn.MultiheadAttention, in_delta: torch.Tensor, out_delta: torch.Tensor, arguments: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``module``'s output for the call ``arguments`` with ``in_proj_weight + in_delta`` ``(3E, E)`` and
    ``out_proj.weight + out_delta`` ``(E, E)``: ``nn.MultiheadAttention.forward``'s general path (batch-first
    inputs transposed to ``(L, N, E)`` and back), with the module's biases, ``bias_k`` / ``bias_v``,
    ``add_zero_attn``, attention dropout (while training) and masks."""
    query, key, value = arguments["query"], arguments["key"], arguments["value"]
    in_weight = module.in_proj_weight + in_delta.to(module.in_proj_weight.dtype)  # (3E, E)
    out_weight = module.out_proj.weight + out_delta.to(module.out_proj.weight.dtype)  # (E, E)
    batched = query.dim() == 3
    if module.batch_first and batched:  # (N, L, E) -> (L, N, E), keeping which of them are the same tensor
        if key is value:
            if query is key:
                query = key = value = query.transpose(1, 0)
            else:
                query, key = (x.transpose(1, 0) for x in (query, key))
                value = key
        else:
            query, key, value = (x.transpose(1, 0) for x in (query, key, value))
    attn_mask = arguments["attn_mask"]
    key_padding_mask = F._canonical_mask(
        mask=arguments["key_padding_mask"],
        mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask),
        other_name="attn_mask",
        target_type=query.dtype,
    )
    attn_mask = F._canonical_mask(
        mask=attn_mask,
        mask_name="attn_mask",
        other_type=None,
        other_name="",
        target_type=query.dtype,
        check_other=False,
    )
    output, weights = F.multi_head_attention_forward(
        query,
        key,
        value,
        module.embed_dim,
        module.num_heads,
        in_weight,
        module.in_proj_bias,
        module.bias_k,
        module.bias_v,
        module.add_zero_attn,
        module.dropout,
        out_weight,
        module.out_proj.bias,
        training=module.training,
        key_padding_mask=key_padding_mask,
        need_weights=arguments["need_weights"],
        attn_mask=attn_mask,
        average_attn_weights=arguments["average_attn_weights"],
        is_causal=arguments["is_causal"],
    )  # (L, N, E)
    if module.batch_first and batched:
        output = output.transpose(1, 0)  # (N, L, E)
    return output, weights
