"""The fusion half of the model API (AdapterFusion): see ``adapterhub.runtime.fusion`` for the math.

::

    model.add_adapter_fusion(Fuse("a", "b", "c"), config="dynamic")     # or "static", FusionConfig(...)
    model.add_classification_head("target", num_labels=3)
    model.train_adapter_fusion(Fuse("a", "b", "c"), head="target")     # base + adapters frozen
    ...                                                                 # loss includes λ·||I - V||² while training
    model.save_adapter_fusion("out/fusion", Fuse("a", "b", "c"))       # fusion + head + the three adapters
    model.load_adapter_fusion("out/fusion", set_active=True)
    model.fusion_activations(texts, tokenizer=tok)                      # mean weight per (layer, adapter)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adapterhub.api.adapters import AdapterAPIMixin
from adapterhub.errors import AdapterExistsError, AdapterNotFoundError, ConfigError, did_you_mean
from adapterhub.runtime.core import load_exact
from adapterhub.spec.composition import Fuse, fuse_blocks, normalize_setup, setup_names

if TYPE_CHECKING:
    from adapterhub.runtime.fusion import AdapterFusion, FusionActivations, FusionConfig


def as_fuse(setup: Any) -> Fuse:
    """``Fuse(...)``, ``"a,b,c"`` or ``["a", "b", "c"]`` -> ``Fuse("a", "b", "c")``."""
    if isinstance(setup, Fuse):
        return setup
    if isinstance(setup, str):
        return Fuse(*[s.strip() for s in setup.split(",") if s.strip()])
    if isinstance(setup, Sequence) and all(isinstance(s, str) for s in setup):
        return Fuse(*setup)
    raise ConfigError(f"Expected Fuse('a', 'b', ...), 'a,b' or a list of adapter names; got {setup!r}.")


class FusionMixin(AdapterAPIMixin):
    """Methods mixed into the model by ``adapterhub.init`` for AdapterFusion; fusions live in
    ``model._adapterhub.fusions`` under the key ``"a,b,c"``."""

    # ------------------------------------------------------------------ create / delete
    @property
    def fusions(self) -> dict[str, FusionConfig]:
        """Fusion name (``"a,b,c"``) -> its config."""
        return {name: module.config for name, module in self._store.fusions.items()}  # type: ignore[misc]

    def _require_fusion(self, setup: Any) -> AdapterFusion:
        fuse = as_fuse(setup)
        fusions = self._store.fusions
        if fuse.fusion_name not in fusions:
            known = ", ".join(fusions.keys()) or "none yet"
            raise AdapterNotFoundError(
                f"No fusion {fuse!r}{did_you_mean(fuse.fusion_name, fusions.keys())}. Fusions on this model: "
                f"{known}. Add one with model.add_adapter_fusion({fuse!r})."
            )
        return fusions[fuse.fusion_name]  # type: ignore[no-any-return,return-value]

    def _fusion_sites(self, fuse: Fuse) -> dict[int, tuple[str, ...]]:
        modules = [self._require_adapter(n) for n in fuse.children]  # type: ignore[arg-type]
        placements = [module.fuse_placement() for module in modules]  # raises for methods Fuse cannot combine
        if any(p != placements[-1] for p in placements):
            detail = ", ".join(f"{n}: {p}" for n, p in zip(fuse.children, placements, strict=True))
            raise ConfigError(
                f"The adapters of {fuse!r} are placed differently ({detail}); a fusion prepares one input for all "
                "of them, so they must agree (e.g. all 'pfeiffer' or all 'houlsby')."
            )
        sites: dict[int, tuple[str, ...]] = {}
        for layer in range(self.model_dims().num_layers):
            per_adapter = {
                name: tuple(m.sites_at(layer)) for name, m in zip(fuse.children, modules, strict=True)
            }
            if len(set(per_adapter.values())) > 1:
                raise ConfigError(
                    f"The adapters of {fuse!r} sit at different sites in layer {layer} ({per_adapter}); a fusion needs "
                    "adapters at the same positions (e.g. all 'pfeiffer' or all 'houlsby', same leave_out)."
                )
            sites[layer] = next(iter(per_adapter.values()))
        return sites

    def _build_fusion(self, fuse: Fuse, config: FusionConfig) -> AdapterFusion:
        from adapterhub.runtime.fusion import AdapterFusion

        dropout = config.dropout
        if dropout is None:
            dropout = float(getattr(self.config, "attention_probs_dropout_prob", 0.0) or 0.0)
        dims = self.model_dims()
        return AdapterFusion(
            fuse.adapter_names,
            config,
            dims.hidden_size,
            self._fusion_sites(fuse),
            dropout,
            layer_widths={i: dims.hidden_size_at(i) for i in range(dims.num_layers)},
        )

    def add_adapter_fusion(
        self,
        adapter_setup: Any,
        config: str | Mapping[str, Any] | FusionConfig | None = "dynamic",
        *,
        overwrite_ok: bool = False,
        set_active: bool = False,
    ) -> AdapterFusion:
        """Add fusion weights for ``Fuse(a, b, ...)`` over existing adapters (which must sit at the same sites).

        ``config``: ``"dynamic"`` (Q, K, V; V initialised to identity and regularised towards it), ``"static"``
        (Q, K, no V), a dict or a ``FusionConfig``."""
        from adapterhub.runtime.fusion import resolve_fusion_config

        fuse = as_fuse(adapter_setup)
        resolved = resolve_fusion_config(config)
        if fuse.fusion_name in self._store.fusions and not overwrite_ok:
            raise AdapterExistsError(
                f"A fusion {fuse!r} already exists; pass overwrite_ok=True to replace it."
            )
        module = self._place(self._build_fusion(fuse, resolved))
        self._store.fusions[fuse.fusion_name] = module
        if set_active:
            self.set_active_adapters(fuse)
        return module  # type: ignore[no-any-return,return-value]

    def delete_adapter_fusion(self, adapter_setup: Any) -> None:
        fuse = as_fuse(adapter_setup)
        self._require_fusion(fuse)
        del self._store.fusions[fuse.fusion_name]
        if fuse in _fuses(self._store.active_setup):
            self._store.active_setup = None

    # ------------------------------------------------------------------ training
    def train_adapter_fusion(
        self,
        adapter_setup: Any,
        *,
        unfreeze_adapters: bool = False,
        train_head: bool = True,
        head: str | None = None,
    ) -> None:
        """Freeze the base model and (unless ``unfreeze_adapters``) the adapters; train the fusion weights of every
        ``Fuse`` in ``adapter_setup`` and the head; activate the setup; switch to training mode.

        The head trained is ``head`` if given (and made the active head), else the active flexible head, else the
        model's built-in head. While training, the forward adds ``λ·||I - V||²`` of the trained fusions to the
        returned loss."""
        setup = normalize_setup(
            adapter_setup if not isinstance(adapter_setup, str) else as_fuse(adapter_setup)
        )
        fuses = _fuses(setup)
        if not fuses:
            raise ConfigError(
                f"train_adapter_fusion needs a setup with a Fuse(...) block, got {adapter_setup!r}."
            )
        modules = [self._require_fusion(f) for f in fuses]
        for param in self._module().parameters():
            param.requires_grad_(False)
        for module in modules:
            module.requires_grad_(True)
        if unfreeze_adapters:
            for name in setup_names(setup):
                self._require_adapter(name).requires_grad_(True)
        self.set_active_adapters(setup)
        if head is not None:
            self.active_head = head
        if train_head:
            self._unfreeze_active_head()
        self._module().train()

    def fusion_regularization_loss(self, adapter_setup: Any = None) -> torch.Tensor | None:
        """``λ·Σ||I - V||²`` of the fusions in ``adapter_setup`` (default: the active setup) that are being
        trained; add it to your loss if you compute the loss outside the model."""
        from adapterhub.runtime.fusion import regularization_loss

        setup = self._store.current_setup() if adapter_setup is None else normalize_setup(adapter_setup)
        if isinstance(setup, str) and "," in setup:
            setup = as_fuse(setup)
        return regularization_loss(self._store.fusions, setup)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ save / load
    def save_adapter_fusion(
        self,
        directory: str | os.PathLike[str],
        adapter_setup: Any,
        *,
        with_head: bool | str = True,
        with_adapters: bool = True,
        layout: str = "adapterhub",
    ) -> Path:
        """Save the fusion weights of ``adapter_setup`` (``Fuse(...)`` or ``"a,b,c"``) to ``directory``.

        ``with_head``: True saves the active flexible head (else the model's built-in head if it has one), a
        string saves that flexible head, False none. ``with_adapters``: also save each fused adapter (without
        head) into ``directory/adapters/<name>/`` so that ``load_adapter_fusion`` restores everything.
        ``layout="adapters"``: the `adapters` library's files (its ``load_adapter_fusion`` reads the directory,
        its ``load_adapter`` each ``adapters/<name>/``); ``"adapterhub"`` (default): docs/FORMAT.md."""
        from adapterhub.io.fusion_dir import (
            ADAPTERS_SUBDIR,
            FusionRecord,
            write_adapters_lib_fusion,
            write_fusion_dir,
        )

        if layout not in ("adapterhub", "adapters"):
            raise ConfigError(f"Unknown layout {layout!r}; use 'adapterhub' or 'adapters'.")
        fuse = as_fuse(adapter_setup)
        module = self._require_fusion(fuse)
        head = None
        if with_head:
            head_name = with_head if isinstance(with_head, str) else self.active_head
            if isinstance(with_head, str) and with_head not in self._store.heads:
                raise AdapterNotFoundError(f"No head named {head_name!r} to save with the fusion.")
            head = self._head_record(head_name) if head_name else self._head_record("__static__")
        directory = Path(directory)
        adapter_dirs: dict[str, Path] = {}
        if with_adapters:
            for name in fuse.adapter_names:
                target = directory / ADAPTERS_SUBDIR / name
                self.save_adapter(target, name, with_head=False, layout=layout)
                adapter_dirs[name] = target
        record = FusionRecord(
            adapters=fuse.adapter_names,
            config=module.config.to_dict(),
            model=self.model_info(),
            tensors=dict(module.state_dict()),
            head=head,
            adapter_dirs=adapter_dirs,
        )
        if layout == "adapters":
            return write_adapters_lib_fusion(record, directory, self._spec, self._module())
        return write_fusion_dir(record, directory)

    def load_adapter_fusion(
        self,
        directory: str | os.PathLike[str],
        *,
        set_active: bool = False,
        with_head: bool = True,
        load_adapters: bool = True,
        overwrite_ok: bool = False,
    ) -> Fuse:
        """Load fusion weights (our layout, or the `adapters` library's ``save_adapter_fusion`` output) and the
        head saved with them. Adapters saved alongside in ``adapters/<name>/`` (either layout) are loaded when
        the model lacks them; a fusion saved by the `adapters` library holds no adapters, so load those first
        with ``load_adapter``. Everything is checked
        before the model changes. Returns the ``Fuse`` block (activated with its head if ``set_active``)."""
        from adapterhub.io.fusion_dir import read_fusion_dir
        from adapterhub.runtime.fusion import FusionConfig

        record = read_fusion_dir(directory, spec=self._spec, with_head=with_head)
        fuse = Fuse(*record.adapters)
        self._check_compatible(record.model, f"fusion {fuse!r}")
        if fuse.fusion_name in self._store.fusions and not overwrite_ok:
            raise AdapterExistsError(
                f"A fusion {fuse!r} already exists; pass overwrite_ok=True to replace it."
            )
        missing = [n for n in record.adapters if not self.has_adapter(n)]
        if missing and not (load_adapters and all(n in record.adapter_dirs for n in missing)):
            raise AdapterNotFoundError(
                f"The fusion {fuse!r} needs adapter(s) {missing}, which this model does not have"
                + (" and the fusion directory does not hold" if record.adapter_dirs else "")
                + ". Load them first with model.load_adapter(path)."
            )
        loaded: list[str] = []
        try:
            for name in missing:
                loaded.append(self.load_adapter(record.adapter_dirs[name], with_head=False))
            module = self._build_fusion(fuse, FusionConfig.from_dict(record.config))
            load_exact(module, record.tensors, f"fusion {fuse!r}")
            install_head = (
                self._prepare_head(record.head, record.head.name)
                if with_head and record.head is not None
                else None
            )
        except BaseException:
            for name in loaded:  # leave the model as it was
                del self._store.adapters[name]
            self._store.changed()
            raise
        self._store.fusions[fuse.fusion_name] = self._place(module)
        if install_head is not None:
            install_head()
        if set_active:
            self.set_active_adapters(fuse)
            if record.head is not None and record.head.head_type != "static":
                self.active_head = record.head.name
        return fuse

    # ------------------------------------------------------------------ analysis
    def fusion_activations(
        self,
        data: Any,
        tokenizer: Any = None,
        *,
        fusion: Any = None,
        batch_size: int = 32,
        max_length: int = 128,
    ) -> FusionActivations:
        """Mean softmax weight per (layer, adapter) of a fusion over ``data`` (the paper's Figure 4/6 analysis).

        ``data``: a list of texts or ``Example`` rows (with ``tokenizer``), or an iterable of batches (dicts with
        ``input_ids`` / ``attention_mask``, e.g. a DataLoader). ``fusion``: which ``Fuse`` (default: the one in
        the active setup, or the only fusion of the model). Averages over non-padding tokens; rows sum to 1.
        Plot with ``adapterhub.runtime.fusion.plot_fusion_heatmap``."""
        from adapterhub.runtime.fusion import compute_fusion_activations

        if fusion is None:
            active = _fuses(self._store.current_setup())
            names = list(self._store.fusions.keys())
            if active:
                fuse = active[0]
            elif len(names) == 1:
                fuse = as_fuse(names[0])
            else:
                raise ConfigError(f"Which fusion? Pass fusion=Fuse(...); the model has {names or 'none'}.")
        else:
            fuse = as_fuse(fusion)
        self._require_fusion(fuse)
        return compute_fusion_activations(
            self._module(), fuse, data, tokenizer, batch_size=batch_size, max_length=max_length
        )


def _fuses(setup: Any) -> list[Fuse]:
    return fuse_blocks(setup)
