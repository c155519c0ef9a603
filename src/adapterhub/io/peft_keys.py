"""Every key of peft's ``LoraConfig``, ``LoHaConfig``, ``LoKrConfig`` and ``VeraConfig`` (peft 0.21.2) and what
reading a peft file does with it: honoured (it becomes part of the adapter), metadata (it changes no weight or
output), or refused by name with what to do instead (``check_lora_keys``, ``check_lycoris_keys``,
``check_vera_keys``). A key these tables do not know (a
newer peft) is refused unless its value is empty.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.spec.configs.data_inits import CordaConfig, LoraGAConfig
from adapterhub.spec.configs.low_rank import PISSA_NITER

# keys that become part of the adapter (docs/compat.md, "peft files")
HONOURED: dict[str, str] = {
    "r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "use_rslora": "use_rslora",
    "use_dora": "the dora method",
    "target_modules": "the adapted modules (read from the weights)",
    "exclude_modules": "the adapted modules (read from the weights)",
    "layers_to_transform": "the adapted modules (read from the weights)",
    "layers_pattern": "the adapted modules (read from the weights)",
    "rank_pattern": "rank_pattern",
    "alpha_pattern": "alpha_pattern",
    "modules_to_save": "modules_to_save (the adapter's copies of those modules)",
    "fan_in_fan_out": "the module's type (Conv1D stores its weight transposed; peft corrects the flag the same way)",
    "init_lora_weights": "init (True / False / 'gaussian' / 'pissa' / 'pissa_niter_K' / 'olora' / 'orthogonal' / "
    "'loftq' / 'corda' / 'lora_ga'; 'eva' and 'mica' read as 'lora': they leave the base as it is)",
    "corda_config": "corda_config (corda_method, use_float16_for_covariance; with init_lora_weights='corda')",
    "lora_ga_config": "lora_ga_config (direction, scale, stable_gamma; with init_lora_weights='lora_ga')",
    "loftq_config": "loftq_bits / loftq_iter (with init_lora_weights='loftq')",
    "bias": "bias ('lora_only' / 'all': the adapter holds the model's biases peft saved)",
    "trainable_token_indices": "trainable_token_indices (the adapter holds the embedding rows peft saved)",
}

# keys that describe the file or peft's runtime, not the adapter's weights or outputs
METADATA: frozenset[str] = frozenset(
    {
        "peft_type",  # 'LORA' (other types are other methods)
        "task_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "runtime_config",  # peft's GPU offload of DoRA at run time
        "megatron_core",  # used only with megatron_config
        "qalora_group_size",  # used only with use_qalora
        "eva_config",  # how EVA drew A from data; a saved adapter's weights replace it and the base is unchanged
    }
)

_BASE_WEIGHTS = (
    "it changes the base model's weights, convert the adapter to a plain "
    "LoRA with peft first (save_pretrained(path_initial_model_for_weight_conversion=...))"
)

# key -> (values that change nothing, why it is refused and what to do instead)
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "layer_replication": ((None, []), "adapterhub does not replicate layers; expand the base model first"),
    "lora_bias": ((False, None), "adapterhub's LoRA has no bias on lora_B; train without lora_bias"),
    "target_parameters": (
        (None, []),
        "LoRA on bare parameters (e.g. MoE experts) is not supported; target the modules holding them",
    ),
    "megatron_config": (
        (None, {}),
        "Megatron parallel layers are not supported; save from an unsharded model",
    ),
    "velora_config": ((None,), "VeLoRA is a different method; use a plain LoRA"),
    "alora_invocation_tokens": ((None, []), "activated LoRA (aLoRA) is not supported; use a plain LoRA"),
    "use_qalora": ((False, None), "QALoRA's pooled inputs are not supported; use a plain LoRA"),
    "monteclora_config": ((None,), "MonteCLoRA is a different method; use a plain LoRA"),
    "use_bdlora": ((False, None), "block-diagonal LoRA is not supported; use a plain LoRA"),
    "arrow_config": (
        (None,),
        "Arrow routing over LoRA experts is not supported; load the experts separately",
    ),
    "kasa_config": ((None,), "KaSA is a different method; use a plain LoRA"),
    "ensure_weight_tying": (
        (False, None),
        "tied adapter weights across tied modules are not supported; save without ensure_weight_tying",
    ),
}

INIT_VALUES = (
    True,
    False,
    "gaussian",
    "pissa",
    "olora",
    "orthogonal",
    "loftq",
    "eva",
    "mica",
    "corda",
    "lora_ga",
)
# a peft folder of a data init that replaced the base holds no initial factors: its base is the residual model
_RESIDUAL_BASE = (
    "A peft adapter with init_lora_weights={init!r} is loaded: its weights apply to the residual model peft "
    "made (W - s B0 A0, saved beside it), which the folder does not hold. It is loaded over the model's weights as "
    "they are: load it on that residual model, or convert it with peft first "
    "(save_pretrained(path_initial_model_for_weight_conversion=...)) to use it on the original model."
)


def init_from_peft(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``init`` (and LoftQ's options) for peft's ``init_lora_weights`` / ``loftq_config``: empty for True /
    False / 'eva' / 'mica' (a trained adapter's weights are loaded over the init, and these leave the base as it
    is); the base-modifying inits are redone on the base when the adapter is loaded, as peft does, except CorDA's
    and LoRA-GA's (found from data: the folder's base is peft's residual model, so the model's weights stay as they
    are, with a warning; peft's LoRA-GA load does the same, its CorDA load raises)."""
    init = meta.get("init_lora_weights", True)
    if init in (True, False, None, "eva", "mica"):
        return {}
    out: dict[str, Any] = {"init": init}
    if init in ("corda", "lora_ga"):
        warnings.warn(_RESIDUAL_BASE.format(init=init), stacklevel=3)
        option, options = (
            ("corda_config", CordaConfig) if init == "corda" else ("lora_ga_config", LoraGAConfig)
        )
        out[option] = dict(options.from_value(meta.get(option)).pairs())
    if init == "loftq":
        loftq = meta.get("loftq_config") or {}
        out.update(loftq_bits=int(loftq.get("loftq_bits", 4)), loftq_iter=int(loftq.get("loftq_iter", 1)))
    return out


def init_to_peft(config: Mapping[str, Any]) -> dict[str, Any]:
    """peft's ``init_lora_weights`` (and ``loftq_config``) for our config's ``init``, as peft writes them."""
    init = config.get("init", "lora")
    if init == "loftq":
        bits, iters = config.get("loftq_bits", 4), config.get("loftq_iter", 1)
        return {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": bits, "loftq_iter": iters}}
    if init == "eva":  # the options EVA ran with, as peft writes them (its weights are what loads)
        return {"init_lora_weights": "eva", "eva_config": dict(config.get("eva_config") or {})}
    return {"init_lora_weights": True if init == "lora" else init}


# LoHa / LoKr: every key of their configs becomes the option of the same name (the targets are read from the
# weights, as for LoRA); ``use_effective_conv2d`` concerns convolutions larger than 1×1 (their CP-decomposed factors)
LYCORIS_HONOURED: dict[str, frozenset[str]] = {
    "LOHA": frozenset(
        {
            "r",
            "alpha",
            "rank_dropout",
            "module_dropout",
            "use_effective_conv2d",
            "init_weights",
            "target_modules",
            "exclude_modules",
            "layers_to_transform",
            "layers_pattern",
            "rank_pattern",
            "alpha_pattern",
            "modules_to_save",
        }
    ),
}
LYCORIS_HONOURED["LOKR"] = LYCORIS_HONOURED["LOHA"] | {
    "decompose_both",
    "decompose_factor",
    "rank_dropout_scale",
}


# VeRA: every key of VeraConfig becomes the option of the same name, except the targets (read from the weights) and
# ``fan_in_fan_out`` (the module's type decides, as peft corrects the flag); ``bias`` must be "none"
VERA_HONOURED: frozenset[str] = frozenset(
    {
        "r",
        "projection_prng_key",
        "save_projection",
        "vera_dropout",
        "d_initial",
        "fan_in_fan_out",
        "bias",
        "init_weights",
        "target_modules",
        "layers_to_transform",
        "layers_pattern",
        "modules_to_save",
    }
)


def _empty(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def check_lora_keys(meta: Mapping[str, Any], directory: Path) -> None:
    """Raise a ConfigError naming the first key of a peft LoRA ``adapter_config.json`` that adapterhub cannot
    honour, with what to do instead."""
    for key, value in meta.items():
        if key in METADATA:
            continue
        if key in HONOURED:
            if key == "bias" and value not in ("none", None, "lora_only", "all"):
                raise ConfigError(
                    f"The peft adapter in {directory} sets bias={value!r}; peft's LoRA knows 'none', 'lora_only' "
                    "and 'all'. Save it with one of those."
                )
            if key == "init_lora_weights" and value not in INIT_VALUES and not PISSA_NITER.match(str(value)):
                raise ConfigError(
                    f"The peft adapter in {directory} sets init_lora_weights={value!r}, an initialisation adapterhub "
                    f"does not know (it knows {', '.join(repr(v) for v in INIT_VALUES)} and 'pissa_niter_K'); if "
                    f"{_BASE_WEIGHTS}."
                )
            continue
        if key in REFUSED:
            neutral, why = REFUSED[key]
            if value in neutral:
                continue
            raise ConfigError(
                f"The peft adapter in {directory} sets {key}={value!r}, which adapterhub cannot represent: {why}."
            )
        _refuse_unknown(key, value, directory)


def check_lycoris_keys(meta: Mapping[str, Any], directory: Path) -> None:
    """Raise a ConfigError naming the first key of a peft LoHa / LoKr ``adapter_config.json`` that adapterhub cannot
    honour, with what to do instead."""
    honoured = LYCORIS_HONOURED[str(meta.get("peft_type"))]
    for key, value in meta.items():
        if key in METADATA or key in honoured:
            continue
        _refuse_unknown(key, value, directory)


def check_vera_keys(meta: Mapping[str, Any], directory: Path) -> None:
    """Raise a ConfigError naming the first key of a peft VeRA ``adapter_config.json`` that adapterhub cannot
    honour (``bias`` other than "none", a key of a newer peft), with what to do instead."""
    for key, value in meta.items():
        if key in METADATA:
            continue
        if key == "bias" and value not in ("none", None):
            raise ConfigError(
                f"The peft VeRA adapter in {directory} sets bias={value!r}: peft then trains and saves the model's "
                "biases, which adapterhub's VeRA does not hold. Merge it into the base model with peft "
                "(merge_and_unload), or train with bias='none'."
            )
        if key not in VERA_HONOURED:
            _refuse_unknown(key, value, directory)


def _refuse_unknown(key: str, value: Any, directory: Path) -> None:
    if not _empty(value):
        raise ConfigError(
            f"The peft adapter in {directory} sets {key}={value!r}, an option of a newer peft that adapterhub "
            "does not know; save it without that option (or with peft 0.21)."
        )


# AdaLoRA (``AdaLoraConfig``, a ``LoraConfig``): the keys that become options of our ``adalora``; ``r``,
# ``use_rslora``, ``alpha_pattern`` and ``init_lora_weights`` change nothing in peft's AdaLoRA once it is saved (it
# builds every module with ``init_r`` and ``lora_alpha``), so they are metadata here
ADALORA_HONOURED: frozenset[str] = frozenset(
    {
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "exclude_modules",
        "layers_to_transform",
        "layers_pattern",
        "rank_pattern",
        "modules_to_save",
        "fan_in_fan_out",
        "init_r",
        "target_r",
        "tinit",
        "tfinal",
        "deltaT",
        "beta1",
        "beta2",
        "orth_reg_weight",
        "total_step",
    }
)
ADALORA_IGNORED: frozenset[str] = frozenset({"r", "use_rslora", "alpha_pattern", "init_lora_weights"})


def check_adalora_keys(meta: Mapping[str, Any], directory: Path) -> None:
    """Raise a ConfigError naming the first key of a peft AdaLoRA ``adapter_config.json`` that adapterhub cannot
    honour (``bias`` other than "none", ``use_dora``, trainable tokens, LoRA-only options, a newer peft's key)."""
    for key, value in meta.items():
        if key in METADATA or key in ADALORA_HONOURED or key in ADALORA_IGNORED:
            continue
        if key in ("bias", "use_dora", "trainable_token_indices"):
            if value in ("none", False, None):
                continue
            raise ConfigError(
                f"The peft AdaLoRA adapter in {directory} sets {key}={value!r}, which adapterhub's AdaLoRA does not "
                "hold (its update is A, B, E on each module); save it without that option, or merge it into the "
                "base model with peft (merge_and_unload)."
            )
        if key in REFUSED:
            neutral, why = REFUSED[key]
            if value in neutral:
                continue
            raise ConfigError(
                f"The peft adapter in {directory} sets {key}={value!r}, which adapterhub cannot represent: {why}."
            )
        _refuse_unknown(key, value, directory)
