"""Prefix tuning in the `adapters` library's layout on an encoder-decoder whose stacks it names per stack (Whisper).

That library keeps one prefix pool per attention location, each its own reparametrisation MLP (or, ejected, its
own flat tensor): ``encoder_prefix`` (the encoder's self-attention, ``L_e`` layers), ``self_prefix`` (the decoder's
self-attention, ``L_d`` layers) and ``cross_prefix`` (the decoder's cross-attention, ``L_d`` layers). Pool ``l``
gives ``KV_l`` ``(P, L_l·2·H·D)``, laid out ``(P, L_l, 2, H, D)`` (layer-major, then key/value). Our one prefix
module has slots in the order encoder self, decoder self, decoder cross, each block ``2·H·D``, so

    ours (flat, P·N) = concat([KV_encoder, KV_self, KV_cross], dim=1).reshape(-1),   N = Σ_l L_l·2·H·D.

Three independent MLPs are not one MLP, so their adapter is read in our flat form (``flat=True``: the prefix
itself, the same outputs; training it again trains the prefix directly), and ours is written in theirs flat: the
prefix split back into the three pools, each a 1-D ``control_trans`` with ``"flat": true`` (their
``FlatPrefixTuning``). Their weights are saved once per attention module and once on the model
(``<prefix>.prefix_tuning.prefix_tunings...``), all copies equal; every copy is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn import functional as F

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.methods.bottleneck import make_activation
from adapterhub.runtime.records import AdapterRecord
from adapterhub.spec.architectures import ArchitectureSpec

LOCATIONS = ("encoder_prefix", "self_prefix", "cross_prefix")
_KEYS = ("prefix_length", "bottleneck_size", "non_linearity", "dropout")
_THEIR_DEFAULTS: dict[str, Any] = {
    "architecture": "prefix_tuning",
    "encoder_prefix": True,
    "init_weights_seed": None,
    "shared_gating": True,
    "use_gating": False,
}


def is_encoder_decoder(spec: ArchitectureSpec) -> bool:
    """Whether ``spec``'s second stack is a decoder with cross-attention (Whisper), not a second tower (CLIP)."""
    return spec.decoder is not None and spec.decoder.cross_attention is not None


def _pool_kv(params: Mapping[str, torch.Tensor], prefix_length: int, non_linearity: str) -> torch.Tensor:
    """One pool's ``KV`` ``(P, L·2·H·D)``: its flat tensor, or ``Linear -> f -> Linear`` of ``wte``."""
    control = params.get("control_trans")
    if control is not None:
        return control.reshape(prefix_length, -1)
    hidden = make_activation(non_linearity)(
        F.linear(params["wte.weight"], params["control_trans.0.weight"], params["control_trans.0.bias"])
    )  # (P, m)
    return F.linear(hidden, params["control_trans.2.weight"], params["control_trans.2.bias"])  # (P, L·2·H·D)


def read_encdec_prefix(
    theirs: Mapping[str, Any], raw: Mapping[str, torch.Tensor], name: str, where: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Their prefix-tuning adapter -> our config (``flat=True``) and ``{"control_trans": (P·N,)}``."""
    for key, default in (("use_gating", False), ("encoder_prefix", True)):
        if theirs.get(key, default) != default:
            raise ConfigError(
                f"{where}: the prefix-tuning adapter uses the `adapters` option {key}={theirs[key]!r}, which "
                "adapterhub does not support."
            )
    pattern = re.compile(rf"^(?:.*\.)?prefix_tunings\.{re.escape(name)}\.({'|'.join(LOCATIONS)})\.(.+)$")
    pools: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        match = pattern.match(key)
        if match is None:
            raise AdapterFileError(
                f"Weight {key!r} in {where} is not a parameter of the `adapters` prefix-tuning adapter {name!r}."
            )
        location, param = match.groups()
        seen = pools.setdefault(location, {}).setdefault(param, tensor)
        if not torch.equal(seen, tensor):
            raise AdapterFileError(f"{where}: the copies of {location}.{param} differ (key {key!r}).")
    cross = bool(theirs.get("cross_prefix", True))
    wanted = [loc for loc in LOCATIONS if cross or loc != "cross_prefix"]
    if sorted(pools) != sorted(wanted):
        raise AdapterFileError(f"{where}: prefix pools {sorted(pools)}; expected {wanted}.")
    p = int(theirs["prefix_length"])
    non_linearity = str(theirs.get("non_linearity", "tanh")).lower()
    with torch.no_grad():
        kv = torch.cat([_pool_kv(pools[loc], p, non_linearity) for loc in wanted], dim=1)  # (P, N)
    config: dict[str, Any] = {"method": "prefix_tuning", "flat": True, "cross_prefix": cross}
    for key in _KEYS:
        if theirs.get(key) is not None:
            config[key] = theirs[key]
    config["non_linearity"] = non_linearity
    config["leave_out"] = [int(i) for i in theirs.get("leave_out", [])]
    return config, {"control_trans": kv.reshape(-1).clone()}


def write_encdec_prefix(
    record: AdapterRecord, spec: ArchitectureSpec, prefix: str, first_len: int, num_layers: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our prefix (either form) -> their config (``flat: true``) and weights, one flat pool per location; the
    encoder has layers ``0..first_len-1``, the decoder ``first_len..num_layers-1``."""
    assert spec.decoder is not None and spec.decoder.cross_attention is not None
    ours = record.config
    p = int(ours["prefix_length"])
    leave_out = set(ours.get("leave_out", []))
    encoder = [i for i in range(first_len) if i not in leave_out]
    decoder = [j - first_len for j in range(first_len, num_layers) if j not in leave_out]
    cross = bool(ours.get("cross_prefix", True))
    with torch.no_grad():
        kv = _pool_kv(record.tensors, p, str(ours["non_linearity"]))  # (P, N)
    counts = {
        "encoder_prefix": len(encoder),
        "self_prefix": len(decoder),
        "cross_prefix": len(decoder) * cross,
    }
    slots = sum(counts.values())
    if kv.shape[1] % slots:
        raise ConfigError(
            f"the prefix has {kv.shape[1]} numbers per position, not a multiple of {slots} slots"
        )
    block = kv.shape[1] // slots  # 2·H·D
    pools = dict(zip(counts, kv.split([n * block for n in counts.values()], dim=1), strict=True))
    base = f"{prefix}." if prefix else ""
    holders = [f"{base}prefix_tuning"]
    holders += [f"{base}{spec.adapters_lib_layers}.{i}.{spec.attention}.prefix_tuning.pool" for i in encoder]
    for j in decoder:
        layer = f"{base}{spec.decoder.adapters_lib_layers}.{j}"
        holders += [f"{layer}.{spec.decoder.attention}.prefix_tuning.pool"]
        holders += [f"{layer}.{spec.decoder.cross_attention}.prefix_tuning.pool"] if cross else []
    tensors: dict[str, torch.Tensor] = {}
    for holder in holders:
        for location, pool in pools.items():
            if counts[location]:
                tensors[f"{holder}.prefix_tunings.{record.name}.{location}.control_trans"] = (
                    pool.reshape(-1).contiguous().clone()
                )
    theirs = dict(_THEIR_DEFAULTS)
    theirs.update({key: ours[key] for key in _KEYS})
    theirs.update({"flat": True, "cross_prefix": cross, "leave_out": sorted(leave_out)})
    return theirs, tensors
