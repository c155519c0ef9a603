"""The update a module targeted by name gets, read from its factors' shapes alone (no torch): the one reading both
manifest checks share (``spec.manifest.low_rank_modules``: the full check in ``io/manifest.py`` and the hub
server's header check), and the ``nn.Conv2d`` / ``nn.Conv1d`` shapes an adapter declares where its weights do not
say them.

Per family, the factors of one module and what they make (``r`` the rank, ``(d_in, d_out)`` its widths, ``kernel``
``(kh, kw)`` for a convolution):

* LoRA: ``lora_A (r, d_in)``, ``lora_B (d_out, r)`` (a linear or embedding target), or ``lora_A (r, c_in, kh, kw)``,
  ``lora_B (c_out, r, 1, 1)`` (an ``nn.Conv2d``; Conv1d / Conv3d with one / three kernel dimensions): the weights
  say everything;
* LoHa: ``hada_w1_a``, ``hada_w2_a (d_out, r)``, ``hada_w1_b``, ``hada_w2_b (r, n)``; a convolution's ``n`` is its
  flattened kernel ``c_in · kh · kw``, which does not say ``c_in`` nor the kernel;
* LoKr: ``ΔW = W1 ⊗ W2`` with ``W1 (a, c)`` (``lokr_w1``, or ``lokr_w1_a (a, r)`` · ``lokr_w1_b (r, c)``) and
  ``W2 (b, d)`` (``lokr_w2``, or ``lokr_w2_a (b, r)`` · ``lokr_w2_b (r, d)``), ``d_out = a·b``, ``d_in = c·d``; on a
  convolution a full ``lokr_w2`` is ``(b, d, kh, kw)`` (which says it all) and a factored one's ``lokr_w2_b`` is
  ``(r, d · kh · kw)`` (which does not). ``r`` is 0 when both factors are full (no rank in the weights).
* on an ``nn.Conv1d`` (kernel ``(k,)``) the same with one kernel dimension: flattened ``c_in · k`` columns, LoKr's
  full ``lokr_w2 (b, d, k)`` (which says it all); the CP cores are ``(r, r, k, 1)`` as peft stores them, which read
  as a Conv2d of kernel ``(k, 1)`` (the same update) unless the adapter declares the Conv1d.
* peft's ``use_effective_conv2d`` on a kernel larger than 1×1 (CP-decomposed kernels, which say everything):
  LoHa's ``hada_t1``, ``hada_t2 (r, r, kh, kw)`` with ``hada_w1_a``, ``hada_w2_a (r, c_out)`` and ``hada_w1_b``,
  ``hada_w2_b (r, c_in)``; LoKr's factored ``W2`` as ``lokr_t2 (r, r, kh, kw)``, ``lokr_w2_a (r, b)``,
  ``lokr_w2_b (r, d)``, making ``W2 (b, d, kh, kw)``.

``conv_modules`` (written by ``save_adapter`` from the model: ``{path: {"in_channels": c_in, "kernel_size": [kh,
kw]}}`` for every ``nn.Conv2d`` an adapter targets by name, ``[k]`` for LoHa's / LoKr's ``nn.Conv1d``) says what
the weights cannot; a module it names is read as that convolution (kind ``"conv2d"`` / ``"conv1d"`` by the
kernel's dimensions), and factors that do not make it are refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from adapterhub.errors import AdapterFileError

CONV_MODULES = "conv_modules"  # the key of the declared convolutions in an adapter's config file
LORA = ("lora_A", "lora_B")
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
LOHA_CP = ("hada_t1", "hada_t2")  # use_effective_conv2d: the CP cores (r, r, kh, kw)
LOKR_CP = ("lokr_t2",)
FACTOR_NAMES = frozenset(LORA + LOHA + LOKR + LOHA_CP + LOKR_CP)

Conv = tuple[int, tuple[int, ...]]  # (in_channels, (kh, kw) or (k,))
# (kind "linear" / "conv2d" / "conv1d" (LoRA also "conv3d"), r, d_in, d_out, kernel)
Update = tuple[str, int, int, int, tuple[int, ...]]


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """``(m, n)`` with ``m · n = dimension``, as peft splits a width: ``factor > 0`` dividing ``dimension`` gives
    ``(factor, dimension // factor)``; otherwise walk the divisors ``m`` upwards from 1 (``n = dimension // m``)
    while ``m < n`` and the next divisor is at most ``factor`` (``-1``: no bound), and return the pair smaller
    first. ``factorization(128) = (8, 16)``, ``factorization(127) = (1, 127)``, ``factorization(128, 4) = (4, 32)``."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        following = next(k for k in range(m + 1, dimension + 1) if dimension % k == 0)
        if following > bound:
            break
        m, n = following, dimension // following
    return min(m, n), max(m, n)


def read_conv_modules(raw: Any, where: str) -> dict[str, Conv]:
    """``{path: (in_channels, (kh, kw) or (k,))}`` of a config file's ``conv_modules`` (absent: ``{}``); raises
    AdapterFileError naming the expected form otherwise."""
    if raw is None:
        return {}

    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    ok = isinstance(raw, dict) and all(
        isinstance(path, str)
        and path
        and isinstance(entry, dict)
        and set(entry) == {"in_channels", "kernel_size"}
        and positive(entry["in_channels"])
        and isinstance(entry["kernel_size"], list)
        and len(entry["kernel_size"]) in (1, 2)
        and all(positive(k) for k in entry["kernel_size"])
        for path, entry in raw.items()
    )
    if not ok:
        raise AdapterFileError(
            f"{where}: {CONV_MODULES} must map module paths to {{'in_channels': c_in, 'kernel_size': [kh, kw]}} "
            f"(a Conv1d: [k]; positive integers), got {raw!r}."
        )
    return {path: (e["in_channels"], tuple(e["kernel_size"])) for path, e in raw.items()}


def conv_modules_json(conv: Mapping[str, Conv]) -> dict[str, Any]:
    """The JSON form of ``{path: (in_channels, kernel)}`` that ``read_conv_modules`` reads."""
    return {path: {"in_channels": c, "kernel_size": list(k)} for path, (c, k) in sorted(conv.items())}


def factor_update(params: Mapping[str, tuple[int, ...]], conv: Conv | None) -> Update | None:
    """The update the factors ``{name: shape}`` of one module make (see the module docstring), read as the
    declared convolution ``conv`` when given; None when they are not one update of their family (or not that
    convolution)."""
    names = set(params)
    if names <= set(LORA):
        found = _lora(params)
    elif names <= set(LOHA + LOHA_CP):
        found = _loha(params, conv)
    elif names <= set(LOKR + LOKR_CP):
        found = _lokr(params, conv)
    else:
        return None  # the names of two families
    if found is not None and conv is not None:
        kind, r, d_in, d_out, kernel = found
        if len(conv[1]) == 1 and kind == "conv2d" and kernel == (*conv[1], 1):
            found = ("conv1d", r, d_in, d_out, conv[1])  # a Conv1d's CP core (r, r, k, 1), as peft stores it
        if (found[0], found[2], found[4]) != (conv_kind(conv[1]), conv[0], conv[1]):
            return None
    return found


def conv_kind(kernel: tuple[int, ...]) -> str:
    """``"conv1d"`` / ``"conv2d"`` / ``"conv3d"`` by the kernel's number of dimensions."""
    return f"conv{len(kernel)}d"


def _lora(p: Mapping[str, tuple[int, ...]]) -> Update | None:
    a, b = p.get("lora_A"), p.get("lora_B")
    if a is None or b is None or len(a) != len(b) or not b[1] or a[0] % b[1]:
        return None  # B's columns: r, or r / groups for a grouped convolution
    if len(a) == 2 and a[0] != b[1]:
        return None
    if len(a) == 2:
        return ("linear", a[0], a[1], b[0], ())
    if len(a) in (3, 4, 5) and b[2:] == (1,) * (len(a) - 2):  # Conv1d / Conv2d / Conv3d: B pointwise
        return (f"conv{len(a) - 2}d", a[0], a[1], b[0], a[2:])
    return None


def _loha(p: Mapping[str, tuple[int, ...]], conv: Conv | None) -> Update | None:
    if set(p) == set(LOHA + LOHA_CP):  # CP: modes (r, c_out) / (r, c_in), cores (r, r, kh, kw)
        (r, c_out), (r1, c_in), core = p["hada_w1_a"], p["hada_w1_b"], p["hada_t1"]
        modes_fit = p["hada_w2_a"] == (r, c_out) and p["hada_w2_b"] == (r, c_in) and r1 == r
        if modes_fit and len(core) == 4 and core[:2] == (r, r) and p["hada_t2"] == core:
            return ("conv2d", r, c_in, c_out, core[2:])
        return None
    if set(p) != set(LOHA) or any(len(s) != 2 for s in p.values()):
        return None
    (d_out, r), (r1, n) = p["hada_w1_a"], p["hada_w1_b"]
    if p["hada_w2_a"] != (d_out, r) or p["hada_w2_b"] != (r, n) or r1 != r:
        return None
    if conv is None:
        return ("linear", r, n, d_out, ())
    c_in, kernel = conv
    return (conv_kind(kernel), r, c_in, d_out, kernel) if n == c_in * math.prod(kernel) else None


def _pair(p: Mapping[str, tuple[int, ...]], name: str) -> tuple[tuple[int, ...], int] | None:
    """``(shape of the factor, its rank)``: a full ``name`` (rank 0) or ``name_a (rows, r)`` · ``name_b (r, ...)``."""
    full, a, b = p.get(name), p.get(f"{name}_a"), p.get(f"{name}_b")
    if full is not None:
        return (full, 0) if a is None and b is None else None
    if a is None or b is None or len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        return None
    return (a[0], b[1]), a[1]


def _cp_w2(p: Mapping[str, tuple[int, ...]]) -> tuple[tuple[int, ...], int] | None:
    """LoKr's CP-decomposed ``W2``: ``((b, d, kh, kw), r)`` from ``lokr_t2 (r, r, kh, kw)``, ``lokr_w2_a (r, b)``,
    ``lokr_w2_b (r, d)`` (no full ``lokr_w2``)."""
    core, a, b = p["lokr_t2"], p.get("lokr_w2_a"), p.get("lokr_w2_b")
    if "lokr_w2" in p or a is None or b is None or len(a) != 2 or len(b) != 2 or len(core) != 4:
        return None
    if a[0] != b[0] or core[:2] != (a[0], a[0]):
        return None
    return (a[1], b[1], *core[2:]), a[0]


def _lokr(p: Mapping[str, tuple[int, ...]], conv: Conv | None) -> Update | None:
    first, second = _pair(p, "lokr_w1"), (_cp_w2(p) if "lokr_t2" in p else _pair(p, "lokr_w2"))
    if first is None or second is None or len(first[0]) != 2 or len(second[0]) not in (2, 3, 4):
        return None
    (a, c), r1 = first
    w2, r2 = second
    if r1 and r2 and r1 != r2:
        return None
    r = r2 or r1
    b, d = w2[0], w2[1]
    if (
        len(w2) > 2
    ):  # a full (or CP-decomposed) convolution factor (b, d, kh, kw), or a Conv1d's full (b, d, k)
        return (conv_kind(w2[2:]), r, c * d, a * b, w2[2:])
    if conv is None:
        return ("linear", r, c * d, a * b, ())
    c_in, kernel = conv
    # a factored W2 holds the flattened kernel: d · kh · kw (or d · k) columns with c · d = c_in
    if r2 and c_in % c == 0 and d == (c_in // c) * math.prod(kernel):
        return (conv_kind(kernel), r, c_in, a * b, kernel)
    return None
