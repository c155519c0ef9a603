"""AdapterFusion (Pfeiffer et al. 2020): attention over the outputs of N trained adapters, per layer and site.

At a site with sub-layer output ``h`` and residual input ``x``, the adapters ``1..N`` of ``Fuse(a_1, ..., a_N)``
all read the input that the last adapter's config prepares (Pfeiffer: ``a = LN(h + x)``), and each gives its
up-projection ``u_n = s_n · A_n(a)`` (no residual). With query, key and value matrices ``Q, K, V`` of this site::

    q    = Q a + b_Q                                  # (B, T, d)   query: the feed-forward output after LN
    e_n  = q · (K u_n + b_K)                          # (B, T, N)   plain dot product, no 1/sqrt(d)
    p    = softmax_n(dropout(e))                      # (B, T, N)   the fusion weights (Figure 4/6 of the paper)
    o    = Σ_n p_n (V u_n) = V (Σ_n p_n u_n)          # (B, T, d)   V has no bias
    site = leave(o + h)                               # Pfeiffer: LN(o + h + x)

This is the computation of the `adapters` library (checked against its fixtures, docs/compat.md). Computed in a
cheap but exactly equivalent order: ``q · (K u_n + b_K) = (a W_Qᵀ W_K + b_Q W_K) · u_n + const`` needs one ``d × d``
product per token for all N keys (``W_Qᵀ W_K`` is formed once per call), and ``V`` is applied once to the mixed
vector, so fusion costs two ``d × d`` products per token for any N, plus the N adapters themselves, which run as one grouped matmul: their ``W_down`` concatenated into one
``(N·m, d)`` matrix, their ``W_up`` stacked as ``(N, m, d)`` for one batched matmul.

Initialisation (paper): ``Q`` and ``K`` random (normal, std 0.02, zero bias); ``V`` identity with every
off-diagonal entry ``1e-6``. Regulariser (paper): while training, ``λ · Σ_sites ||I - V||²_F`` (``λ`` =
``reg_weight``, 0.01) is added to the loss the model returns, inside its forward (so before ``backward``); call
``model.fusion_regularization_loss()`` when you compute the loss yourself. Static variant (``"static"``): no ``V``
(``o = Σ_n p_n u_n``) and no regulariser.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from adapterhub.errors import AdapterNotFoundError, ConfigError, did_you_mean
from adapterhub.methods.base import AdapterModule, Point, PointInputs
from adapterhub.runtime.traced_context import TracedContextVar
from adapterhub.spec.composition import Fuse, Setup, fuse_blocks, parallel_block

if TYPE_CHECKING:
    import numpy as np


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """How a fusion layer is built.

    ``query`` / ``key`` / ``value``: learn that matrix (else the identity map); ``query_before_ln``: the query is
    the sub-layer output ``h`` instead of the adapters' input ``LN(h + x)``; ``value_initialized``: ``V`` starts
    as identity with off-diagonal 1e-6 (else random like Q, K); ``regularization`` / ``reg_weight``: add
    ``reg_weight · ||I - V||²`` per site to the training loss; ``dropout``: on the attention scores before the
    softmax (None: the model's ``attention_probs_dropout_prob``); ``init_std``: std of the random Q, K init.
    """

    query: bool = True
    key: bool = True
    value: bool = True
    query_before_ln: bool = False
    value_initialized: bool = True
    regularization: bool = True
    reg_weight: float = 0.01
    dropout: float | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"FusionConfig.{f.name} must be true or false, got {value!r}.")
        if not isinstance(self.reg_weight, (int, float)) or self.reg_weight < 0:
            raise ConfigError(f"FusionConfig.reg_weight must be a number >= 0, got {self.reg_weight!r}.")
        if self.dropout is not None and not (
            isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1
        ):
            raise ConfigError(f"FusionConfig.dropout must be in [0, 1) or null, got {self.dropout!r}.")
        if not isinstance(self.init_std, (int, float)) or self.init_std <= 0:
            raise ConfigError(f"FusionConfig.init_std must be a positive number, got {self.init_std!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            hints = "".join(did_you_mean(k, valid) for k in unknown)
            raise ConfigError(
                f"Unknown key(s) {', '.join(map(repr, unknown))} for FusionConfig{hints}. Valid keys: {', '.join(valid)}."
            )
        return cls(**data)


FUSION_PRESETS: dict[str, FusionConfig] = {
    "dynamic": FusionConfig(),
    "static": FusionConfig(value=False, value_initialized=False, regularization=False),
}


def resolve_fusion_config(config: str | Mapping[str, Any] | FusionConfig | None) -> FusionConfig:
    if config is None:
        return FUSION_PRESETS["dynamic"]
    if isinstance(config, FusionConfig):
        return config
    if isinstance(config, Mapping):
        return FusionConfig.from_dict(config)
    if isinstance(config, str) and config in FUSION_PRESETS:
        return FUSION_PRESETS[config]
    raise ConfigError(
        f"Unknown fusion config {config!r}{did_you_mean(str(config), FUSION_PRESETS)}; use 'dynamic', 'static', "
        "a dict or a FusionConfig(...)."
    )


# ------------------------------------------------------------------------------------------------ modules


class FusionLayer(nn.Module):
    """Q, K, V of one site. ``forward(query_input (B,T,d), ups (N,B,T,d)) -> (o (B,T,d), p (B,T,N))``."""

    def __init__(self, hidden_size: int, config: FusionConfig, dropout: float) -> None:
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size) if config.query else None
        self.key = nn.Linear(hidden_size, hidden_size) if config.key else None
        self.value = nn.Linear(hidden_size, hidden_size, bias=False) if config.value else None
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():
            for linear in (self.query, self.key):
                if linear is not None:
                    linear.weight.normal_(0.0, config.init_std)
                    linear.bias.zero_()
            if self.value is not None:
                if config.value_initialized:
                    self.value.weight.fill_(1e-6).fill_diagonal_(1.0)
                else:
                    self.value.weight.normal_(0.0, config.init_std)

    def forward(self, query_input: torch.Tensor, ups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query, key = self.query, self.key
        if query is not None and key is not None:
            # q · (W_k u + b_k) with q = W_q a + b_q  =  (a W_qᵀW_k + b_q W_k) · u + (a · W_qᵀb_k + b_q · b_k):
            # one (d, d) product per token instead of two; W_qᵀW_k costs d³ once per call.
            folded = query.weight.t() @ key.weight  # (d, d)
            qk = F.linear(query_input, folded.t(), query.bias @ key.weight)  # (B, T, d)
            shift = F.linear(query_input, (query.weight.t() @ key.bias).unsqueeze(0), query.bias @ key.bias)
        else:
            q = query(query_input) if query is not None else query_input  # (B, T, d)
            qk = q @ key.weight if key is not None else q  # Kᵀq, so that q · (K u) = (Kᵀq) · u
            shift = (q * key.bias).sum(-1, keepdim=True) if key is not None else None  # type: ignore[assignment]  # q · b_K
        scores = torch.einsum("btd,nbtd->btn", qk, ups)  # (B, T, N)
        if shift is not None:
            scores = scores + shift  # (B, T, 1): equal for every adapter, matters only under dropout
        probs = torch.softmax(self.dropout(scores), dim=-1)  # (B, T, N)
        mixed = torch.einsum("btn,nbtd->btd", probs, ups)  # (B, T, d)
        out = self.value(mixed) if self.value is not None else mixed
        return out, probs

    def regularization_loss(self) -> torch.Tensor | None:
        if self.value is None:
            return None
        weight = self.value.weight
        identity = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
        return (identity - weight).pow(2).sum()


class AdapterFusion(nn.Module):
    """The fusion weights of one ``Fuse(...)``: ``layers[str(i)][site]`` is a ``FusionLayer`` of width
    ``hidden_size``, or ``layer_widths[i]`` where given (the width of layer ``i``'s stack: CLIPModel's towers
    differ)."""

    def __init__(
        self,
        adapter_names: Sequence[str],
        config: FusionConfig,
        hidden_size: int,
        sites: Mapping[int, Sequence[str]],
        dropout: float,
        layer_widths: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.adapter_names = tuple(adapter_names)
        self.fusion_name = ",".join(self.adapter_names)
        self.config = config
        self.hidden_size = hidden_size
        widths = dict(layer_widths or {})
        self.layers = nn.ModuleDict(
            {
                str(i): nn.ModuleDict(
                    {s: FusionLayer(widths.get(i, hidden_size), config, dropout) for s in site_names}
                )
                for i, site_names in sorted(sites.items())
                if site_names
            }
        )

    def layer_at(self, layer: int, site: str) -> FusionLayer | None:
        key = str(layer)
        if key not in self.layers or site not in self.layers[key]:  # type: ignore[operator]
            return None
        return self.layers[key][site]  # type: ignore[index,return-value]

    def site_keys(self) -> list[tuple[int, str]]:
        return [(int(i), s) for i, sites in self.layers.items() for s in sites]  # type: ignore[attr-defined,union-attr]

    def regularization_loss(self) -> torch.Tensor | None:
        """``reg_weight · Σ_sites ||I - V||²_F`` (None for a fusion without V or with regularization off)."""
        if not (self.config.regularization and self.config.value):
            return None
        terms = [
            term
            for sites in self.layers.values()
            for layer in sites.values()  # type: ignore[operator,union-attr]
            if (term := layer.regularization_loss()) is not None
        ]
        return self.config.reg_weight * torch.stack(terms).sum() if terms else None


# ------------------------------------------------------------------------------------------------ compute


# per thread / task, and read by torch.compile while tracing (``traced_context``)
_RECORDING: TracedContextVar[list[tuple[str, int, str, torch.Tensor]] | None] = TracedContextVar(
    "adapterhub_fusion_recording", None
)


@contextlib.contextmanager
def record_fusion_attentions() -> Iterator[list[tuple[str, int, str, torch.Tensor]]]:
    """Inside the block, every fusion site appends ``(fusion_name, layer, site, p)`` with the softmax weights
    ``p`` of shape ``(batch, seq, n_adapters)`` (detached) to the yielded list. Per thread / async task."""
    records: list[tuple[str, int, str, torch.Tensor]] = []
    token = _RECORDING.set(records)
    try:
        yield records
    finally:
        _RECORDING.reset(token)


def fuse_step(
    layer: int,
    point: Point,
    modules: Sequence[AdapterModule | None],
    fusions: Mapping[str, Any],
    block: Fuse,
    inputs: PointInputs,
) -> tuple[torch.Tensor, AdapterModule] | None:
    """The fused running value ``o + residual`` at this point and the adapter whose config leaves it, or None when
    the fused adapters do not sit here. ``modules``: the block's adapters, None where one is absent at the point."""
    if all(m is None for m in modules):
        return None
    key = block.fusion_name
    if key not in fusions:
        known = ", ".join(f"Fuse({k})" for k in fusions) or "none"
        raise AdapterNotFoundError(
            f"{block!r} is active but the model has no fusion weights for it (fusions: {known}). Add them with "
            f"model.add_adapter_fusion({block!r}) or load them with model.load_adapter_fusion(path)."
        )
    fusion: AdapterFusion = fusions[key]
    fusion_layer = fusion.layer_at(layer, point[1])
    missing = [n for n, m in zip(block.children, modules, strict=True) if m is None]
    if fusion_layer is None or missing:
        raise ConfigError(
            f"{block!r} cannot run at layer {layer}, point {point[1]!r}: "
            + (f"adapter(s) {missing} do not sit there." if missing else "the fusion has no weights there.")
        )
    present: list[AdapterModule] = [m for m in modules if m is not None]
    last = present[-1]
    x, adapter_residual = last.fuse_enter(layer, point, inputs)
    ups = last.fuse_deltas(present, layer, point, x)  # (N, B, T, d)
    query_input = inputs.start() if fusion.config.query_before_ln else x  # the sub-layer output h
    out, probs = fusion_layer(query_input, ups)
    records = _RECORDING.get()
    if records is not None:
        records.append((key, layer, point[1], probs.detach()))
    return out + adapter_residual, last


class FusionOwner(Protocol):
    """What the regulariser needs of the adapter store: its fusions and the setup of the current call."""

    fusions: Any

    def current_setup(self) -> Setup | None: ...


def regularization_loss(fusions: Mapping[str, Any], setup: Setup | None) -> torch.Tensor | None:
    """Sum of the regularisers of the fusions in ``setup`` whose V is being trained."""
    terms = []
    for block in fuse_blocks(setup):
        if block.fusion_name not in fusions:
            continue
        fusion: AdapterFusion = fusions[block.fusion_name]
        if not any(p.requires_grad for p in fusion.parameters()):
            continue
        term = fusion.regularization_loss()
        if term is not None:
            terms.append(term)
    return torch.stack(terms).sum() if terms else None


class RegulariserHook:
    """Model forward hook: in training mode, add the active fusions' regulariser to the returned loss."""

    def __init__(self, store: FusionOwner) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not module.training or len(self.store.fusions) == 0:
            return None
        if isinstance(output, tuple):  # return_dict=False: the loss, when there is one, comes first
            if not output or not isinstance(output[0], torch.Tensor) or output[0].dim() != 0:
                return None
            term = regularization_loss(self.store.fusions, self.store.current_setup())
            return output if term is None else (output[0] + term.to(output[0].dtype), *output[1:])
        loss = getattr(output, "loss", None)
        if loss is None:
            return None
        term = regularization_loss(self.store.fusions, self.store.current_setup())
        if term is None:
            return None
        output.loss = loss + term.to(loss.dtype)
        return output


# ------------------------------------------------------------------------------------------------ analysis


@dataclass
class FusionActivations:
    """Mean softmax weight per (layer, adapter) of one fusion over some data (the paper's Figure 4/6).

    ``weights[r, n]``: the average over all non-padding tokens of the weight given to adapter ``n`` at row ``r``;
    ``rows``: one label per (layer, site) with fusion weights (``"3"``, or ``"3/attn"`` when a fusion has
    several sites per layer); every row sums to 1.
    """

    fusion: str
    adapters: tuple[str, ...]
    rows: tuple[str, ...]
    weights: np.ndarray
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "fusion": self.fusion,
            "adapters": list(self.adapters),
            "rows": list(self.rows),
            "weights": [[float(v) for v in row] for row in self.weights],
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionActivations:
        import numpy as np

        return cls(
            fusion=data["fusion"],
            adapters=tuple(data["adapters"]),
            rows=tuple(data["rows"]),
            weights=np.asarray(data["weights"], dtype=np.float64),
            tokens=int(data.get("tokens", 0)),
        )

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> FusionActivations:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def __str__(self) -> str:
        width = max(8, *(len(a) for a in self.adapters))
        lines = ["layer".ljust(8) + "".join(a.rjust(width + 1) for a in self.adapters)]
        for label, row in zip(self.rows, self.weights, strict=True):
            lines.append(label.ljust(8) + "".join(f"{v:.3f}".rjust(width + 1) for v in row))
        return "\n".join(lines)


def _batches(
    data: Any, tokenizer: Any, batch_size: int, max_length: int, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Model inputs from texts (+ tokenizer), Examples (``.text`` / ``.text_pair``), or an iterable of batches
    (a multiple-choice batch keeps its ``choice_mask``)."""
    keep = ("input_ids", "attention_mask", "token_type_ids", "choice_mask")
    if isinstance(data, str):
        data = [data]
    if isinstance(data, Sequence) and data and (isinstance(data[0], str) or hasattr(data[0], "text")):
        if tokenizer is None:
            raise ConfigError("fusion_activations needs tokenizer=... to encode texts.")
        for start in range(0, len(data), batch_size):
            chunk = data[start : start + batch_size]
            texts = [x if isinstance(x, str) else x.text for x in chunk]
            pairs = [None if isinstance(x, str) else getattr(x, "text_pair", None) for x in chunk]
            encoded = tokenizer(
                texts,
                pairs if any(p is not None for p in pairs) else None,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            yield {k: v.to(device) for k, v in encoded.items() if k in keep}
        return
    for batch in data:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise ConfigError(
                "fusion_activations takes a list of texts (with tokenizer=...) or an iterable of batches (dicts "
                f"with input_ids); got an element of type {type(batch).__name__}."
            )
        yield {k: v.to(device) for k, v in batch.items() if k in keep and isinstance(v, torch.Tensor)}


def _token_weights(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """``(model inputs, token mask)``: the mask (rows, seq) says which tokens count in the mean fusion weight.

    Multiple-choice batches (batch, n_choices, seq) count only the tokens of real choices (``attention_mask`` and
    ``choice_mask`` (batch, n_choices)), one row per choice. They go to the model as they are when its active head
    flattens choices (it takes the ``choice_mask``), else flattened to (batch * n_choices, seq) rows."""
    batch = dict(batch)
    choice_mask = batch.pop("choice_mask", None)
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if ids.dim() != 3:
        return batch, mask
    rows, choices, seq = ids.shape
    real = (
        torch.ones(rows, choices, dtype=torch.bool, device=ids.device) if choice_mask is None else choice_mask
    )
    tokens = torch.ones_like(ids) if mask is None else mask  # (batch, n_choices, seq)
    weights = (tokens * real.to(tokens.dtype).unsqueeze(-1)).reshape(rows * choices, seq)
    active = model.active_head
    if active is not None and model.heads[active].flattens_choices:
        if choice_mask is not None:
            batch["choice_mask"] = choice_mask
        return batch, weights
    return {k: v.reshape(rows * choices, *v.shape[2:]) for k, v in batch.items()}, weights


def compute_fusion_activations(
    model: Any,
    fuse: Fuse,
    data: Any,
    tokenizer: Any = None,
    *,
    batch_size: int = 32,
    max_length: int = 128,
) -> FusionActivations:
    import numpy as np

    store = model._store
    fusion: AdapterFusion = store.fusions[fuse.fusion_name]
    keys = fusion.site_keys()
    multi_site = len({site for _, site in keys}) > 1
    sums = {k: torch.zeros(len(fusion.adapter_names), dtype=torch.float64) for k in keys}
    tokens = 0
    current = store.current_setup()
    use_current = fuse in fuse_blocks(current) and parallel_block(current) is None
    device = next(fusion.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), contextlib.ExitStack() as stack:
            if not use_current:
                stack.enter_context(model.adapter_setup(fuse))
            for batch in _batches(data, tokenizer, batch_size, max_length, device):
                batch, mask = _token_weights(model, batch)
                with record_fusion_attentions() as records:
                    model(**batch)
                for name, layer, site, probs in records:
                    if name != fusion.fusion_name:
                        continue
                    weight = (
                        torch.ones(probs.shape[:2], device=probs.device)
                        if mask is None
                        else mask.to(probs.dtype)
                    )
                    sums[(layer, site)] += (probs * weight.unsqueeze(-1)).sum((0, 1)).double().cpu()
                tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ConfigError("fusion_activations got no tokens (empty data).")
    weights = np.stack([(sums[k] / sums[k].sum()).numpy() for k in keys])
    rows = tuple(f"{layer}/{site}" if multi_site else str(layer) for layer, site in keys)
    return FusionActivations(fusion.fusion_name, fusion.adapter_names, rows, weights, tokens)


def plot_fusion_heatmap(
    activations: FusionActivations,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    annotate: bool = True,
    cmap: str = "Blues",
) -> Path:
    """Write the paper's Figure 4/6 style heatmap: layers (rows, first layer at the top) x adapters (columns),
    the mean fusion weight as colour, a colour bar and (by default) the value in each cell."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    weights = activations.weights
    n_rows, n_cols = weights.shape
    fig, ax = plt.subplots(figsize=(1.6 + 1.05 * n_cols, 1.2 + 0.42 * n_rows))
    image = ax.imshow(weights, cmap=cmap, vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto")
    ax.set_xticks(range(n_cols), labels=list(activations.adapters), rotation=35, ha="right")
    ax.set_yticks(range(n_rows), labels=[f"layer {r}" for r in activations.rows])
    ax.set_xlabel("adapter")
    if annotate:
        threshold = float(weights.max()) * 0.6
        for r in range(n_rows):
            for c in range(n_cols):
                value = float(weights[r, c])
                ax.text(
                    c, r, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if value > threshold else "black",
                )  # fmt: skip
    fig.colorbar(image, ax=ax, label="mean fusion weight")
    ax.set_title(title or f"AdapterFusion weights: Fuse({activations.fusion})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
