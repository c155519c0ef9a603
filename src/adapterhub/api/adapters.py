"""The adapter half of the model API: add, delete, train, save, load and publish adapters.

::

    model.add_adapter("sst-2", config="pfeiffer")       # or "lora", "prefix_tuning", a dict, a config object
    model.train_adapter("sst-2")                        # base frozen, adapter (+ head) trainable and active
    model.save_adapter("out/sst-2", "sst-2")            # our layout; layout="adapters" for the adapters library
    model.load_adapter("out/sst-2", set_active=True)    # either layout, or a hub identifier
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from adapterhub.api.summary import AdapterSummary, summarize
from adapterhub.errors import AdapterExistsError, AdapterFileError, ConfigError
from adapterhub.heads.api import HeadsMixin, check_name
from adapterhub.methods import method_for_config
from adapterhub.runtime.core import load_exact
from adapterhub.runtime.quantized import cpu_inference_layout_paths
from adapterhub.runtime.records import AdapterRecord
from adapterhub.runtime.store import STORE_ATTR
from adapterhub.spec.composition import branch_names, normalize_setup, parallel_block, setup_names
from adapterhub.spec.configs import MethodConfig, resolve_config
from adapterhub.spec.configs.low_rank import DATA_INITS, modifies_base


@dataclasses.dataclass(frozen=True)
class PreparedAdapter:
    """An adapter built and loaded beside the model, not in it yet (``prepare_adapter_from_record``): ``module``
    holds its weights (on the model's device and dtype when ``placed``), ``apply_head`` installs its head."""

    name: str
    module: Any
    apply_head: Callable[[], None] | None
    set_active: bool
    overwrite_ok: bool
    placed: bool


class AdapterAPIMixin(HeadsMixin):
    """Adapter lifecycle methods mixed into the model by ``adapterhub.init``."""

    def add_adapter(
        self,
        name: str,
        config: str | Mapping[str, Any] | MethodConfig | None = None,
        *,
        overwrite_ok: bool = False,
        set_active: bool = False,
    ) -> MethodConfig:
        """Add a new adapter (initialised near identity). ``config``: a preset name such as ``"pfeiffer"``,
        ``"houlsby[reduction_factor=64]"``, a dict, or a config object. Returns the resolved config."""
        check_name(name)
        resolved = resolve_config(config)
        if name in self._store.adapters and not overwrite_ok:
            raise AdapterExistsError(
                f"An adapter named {name!r} already exists. Pass overwrite_ok=True to replace it, "
                "or delete it first with model.delete_adapter(name)."
            )
        if name in self._store.merged:
            raise ConfigError(
                f"Adapter {name!r} is merged into the base weights; unmerge it before replacing it."
            )
        self._check_carries(resolved)
        module = method_for_config(resolved)(name, resolved, self.model_dims())  # validates before any change
        self._check_base_sharing(name, module)
        self._bind_saved(module)
        module.init_from_base(self._base_linear)  # e.g. DoRA's magnitude from the base weights
        self._prepare_points(module)
        self._change_base(module, restore=False)  # PiSSA / OLoRA / LoftQ: the base becomes the residual
        self._store.adapters[name] = self._place(module)
        self._store.changed()
        if set_active:
            self.set_active_adapters(name)
        return resolved

    def _check_base_sharing(self, name: str, module: Any) -> None:
        """Refuse a composition that would share a replaced base: an adapter whose init replaces base weights
        (PiSSA, OLoRA, LoftQ) joins only a model without other adapters, and no adapter joins a model that holds
        one (each would see the other's residual instead of the model's weights)."""
        adapters: dict[str, Any] = dict(self._store.adapters.items())  # one C-level copy: safe beside a load
        others = [n for n in adapters if n != name]
        changing = [n for n in others if adapters[n].modifies_base()]
        replaced = name in adapters and adapters[name].modifies_base()
        init = getattr(module.config, "init", None)
        if module.modifies_base() and others:
            raise ConfigError(
                f"Adapter {name!r} (init={init!r}) replaces the base weights of its targets by a residual, which "
                f"the model's other adapters ({', '.join(others)}) would then see instead of the model's weights. "
                "Add it to a model without other adapters, or delete them first."
            )
        if changing:
            raise ConfigError(
                f"Adapter {changing[0]!r} replaced the base weights of its targets by a residual (init="
                f"{getattr(adapters[changing[0]].config, 'init', None)!r}); another adapter on that base "
                f"would not see the model's weights. Save it converted to a plain LoRA (save_adapter(..., "
                "convert_to_lora=True)), delete it (which restores the base), then add or load the others."
            )
        if replaced:
            raise ConfigError(
                f"Adapter {name!r} replaced the base weights; delete it first (which restores them), then add the "
                "new one."
            )

    def _change_base(self, module: Any, *, restore: bool) -> None:
        """Add the method's ``base_updates`` to the base weights (views of each target projection)."""
        with torch.no_grad():
            for layer, point, delta in module.base_updates(restore):
                weight, _ = self._base_linear(layer, point)  # (d_out, d_in)
                weight.add_(delta.to(weight.dtype))

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter, the fusions that include it, and drop it from the active setup."""
        self._require_adapter(name)
        store = self._store
        if name in store.merged:
            raise ConfigError(
                f"Adapter {name!r} is merged into the base weights; call model.unmerge_adapter({name!r}) before "
                "deleting it, or its update would stay in the weights."
            )
        self._change_base(store.adapters[name], restore=True)  # type: ignore[arg-type]
        if name in setup_names(store.active_setup):
            store.active_setup = None
        for key in [key for key, fusion in store.fusions.items() if name in fusion.adapter_names]:  # type: ignore[operator]
            del store.fusions[key]
        del store.adapters[name]
        store.changed()

    # ------------------------------------------------------------------ training
    def freeze_model(self, freeze: bool = True) -> None:
        """Set ``requires_grad = not freeze`` on every parameter of the base model and its built-in head."""
        for name, param in self._module().named_parameters():
            if not name.startswith(STORE_ATTR + "."):
                param.requires_grad_(not freeze)

    def train_adapter(self, setup: Any, *, train_head: bool = True) -> None:
        """Freeze the base model and every other adapter, unfreeze the named adapter(s) and their head, activate
        them and switch to training mode.

        The head trained is the active flexible head (``model.active_head``: the one set explicitly, else the one
        named like the last adapter of the setup), else the model's built-in head (``classifier`` etc.); under
        ``Parallel`` the head of each branch."""
        normalized = normalize_setup(setup)
        names = setup_names(normalized)
        if not names:
            raise ConfigError("train_adapter needs at least one adapter name.")
        for name in names:
            self._require_adapter(name)
        converted = cpu_inference_layout_paths(self)  # type: ignore[arg-type]  # the mixin lives on an nn.Module
        if converted:
            raise ConfigError(
                f"bitsandbytes holds {len(converted)} 4-bit layer(s) (e.g. {converted[0]}) in its CPU inference "
                "layout (a forward without gradients ran before adapterhub.init), which passes no gradient to the "
                "layers before them: reload the model and call adapterhub.init before any forward, then train."
            )
        merged = [n for n in names if n in self._store.merged]
        if merged:
            raise ConfigError(
                f"Adapter(s) {merged} are merged into the base weights and cannot be trained; call "
                "model.unmerge_adapter() first."
            )
        self.set_active_adapters(normalized)  # checks the setup before anything changes
        for param in self._module().parameters():
            param.requires_grad_(False)
        for name in names:
            self._store.adapters[name].requires_grad_(True)
        if train_head:
            parallel = parallel_block(normalized)
            if parallel is not None:  # one head per branch
                for branch in branch_names(parallel):
                    if branch in self._store.heads:
                        self._store.heads[branch].requires_grad_(True)
                self._module().train()
                return
            self._unfreeze_active_head()
        self._module().train()

    # ------------------------------------------------------------------ summary
    def adapter_summary(self) -> AdapterSummary:
        """A table of adapters and heads: name, method, parameters, % of the base model, active, trainable."""
        return summarize(self)

    def adapter_record(self, name: str, *, with_head: bool = True) -> AdapterRecord:
        module = self._require_adapter(name)
        return AdapterRecord(
            name=name,
            config=module.config.to_dict(),
            model=dataclasses.replace(self.model_info(), conv_modules=module.conv_modules()),
            tensors=dict(module.state_dict()),
            head=self._head_record(name) if with_head else None,
        )

    def save_adapter(
        self,
        directory: str | os.PathLike[str],
        name: str,
        *,
        with_head: bool = True,
        layout: str = "adapterhub",
        convert_to_lora: bool = False,
    ) -> Path:
        """Save adapter ``name`` (and its head with label map) to ``directory``.

        ``layout="adapterhub"`` (default): JSON + safetensors (docs/FORMAT.md). ``layout="adapters"``: the
        `adapters` library's layout, loadable by that library. ``layout="peft"`` (LoRA, DoRA, (IA)³, LoHa, LoKr,
        VeRA, OFT, BOFT, LN tuning; the table ``adapterhub.io.peft_dispatch.FORMATS``): peft's layout, loadable by ``peft.PeftModel.from_pretrained``.

        ``convert_to_lora`` (a PiSSA / OLoRA / CorDA / LoRA-GA adapter, any layout): save it as the plain rank-``2r`` LoRA that
        computes the same on the ORIGINAL base weights (peft's ``path_initial_model_for_weight_conversion``;
        ``methods.lora_init.convert_to_lora``). Unconverted, layout ``'peft'`` writes peft's own unconverted form
        (``init_lora_weights='pissa'`` etc.: the init is redone on the base when loaded); a data init that replaced the
        base (CorDA, LoRA-GA) is refused there (peft could not redo it)."""
        record = self._record_to_save(self.adapter_record(name, with_head=with_head), layout, convert_to_lora)
        from adapterhub.io.adapters_lib_stacks import has_stack_paths, peft_layout_maps

        stacks = has_stack_paths(self._spec)
        if self._spec.decoder is not None and (
            (layout == "adapters" and not stacks) or (layout == "peft" and not peft_layout_maps(self._spec))
        ):
            raise ConfigError(
                f"Writing the {layout!r} layout for {self._model_type} models (two layer stacks) is not "
                "implemented (its module names for the second stack are not mapped); save with "
                "layout='adapterhub' (peft's layout works for LoRA / DoRA on encoder-decoders, the `adapters` "
                "library's on CLIPModel and Whisper)."
            )
        if layout == "adapterhub":
            from adapterhub.io.adapter_dir import write_adapter_dir

            return write_adapter_dir(record, directory)
        if layout == "adapters":
            from adapterhub.io.adapters_lib import write_adapters_lib_dir

            if any(key.startswith("saved.") for key in record.tensors):
                raise ConfigError(
                    f"Adapter {name!r} keeps copies of modules (modules_to_save), which the adapters library's "
                    "layout cannot hold; save it with layout='adapterhub' or layout='peft'."
                )

            return write_adapters_lib_dir(record, directory, self._spec, self._module())
        if layout == "peft":
            from adapterhub.io.peft_dispatch import write_peft_dir

            return write_peft_dir(record, directory, self._spec, self._module())
        raise ConfigError(f"Unknown layout {layout!r}; use 'adapterhub', 'adapters' or 'peft'.")

    def _record_to_save(self, record: AdapterRecord, layout: str, convert: bool) -> AdapterRecord:
        """The record converted to a plain LoRA (``convert``), or without the initial factors for the other
        libraries' layouts (peft recomputes them from the base on load; the adapters library has no such init)."""
        if convert:
            from adapterhub.methods.lora_init import convert_to_lora

            config, tensors = convert_to_lora(record.config, record.tensors)
            return dataclasses.replace(record, config=config, tensors=tensors)
        init = str(record.config.get("init", "lora"))
        if layout == "adapters" and modifies_base(init):
            raise ConfigError(
                f"Adapter {record.name!r} (init={init!r}) replaced the base weights, which the adapters library's "
                "layout cannot say; save with convert_to_lora=True (PiSSA / OLoRA / CorDA / LoRA-GA) or layout='adapterhub' / 'peft'."
            )
        if layout == "peft" and modifies_base(init) and init in DATA_INITS:
            raise ConfigError(
                f"Adapter {record.name!r} (init={init!r}) replaced the base weights by a residual found from data, "
                "which peft cannot redo when it loads the folder; save with convert_to_lora=True (a plain LoRA on "
                "the original weights, peft's path_initial_model_for_weight_conversion) or layout='adapterhub' "
                "(keeps the initial factors)."
            )
        if layout == "adapterhub":
            return record
        tensors = {k: v for k, v in record.tensors.items() if not k.endswith((".initial_A", ".initial_B"))}
        return dataclasses.replace(record, tensors=tensors)

    def save_all_adapters(self, directory: str | os.PathLike[str], *, with_head: bool = True) -> list[Path]:
        return [
            self.save_adapter(Path(directory) / name, name, with_head=with_head)
            for name in self._store.adapters
        ]

    def load_adapter(
        self,
        adapter_name_or_path: str | os.PathLike[str],
        *,
        source: str | None = None,
        revision: str | None = None,
        load_as: str | None = None,
        set_active: bool = False,
        with_head: bool = True,
        overwrite_ok: bool = False,
        **hub_options: Any,
    ) -> str:
        """Load an adapter from a directory (ours, the `adapters` library's or peft's layout), a hub identifier such
        as ``"sentiment/rotten_tomatoes@demo"``, or with ``source="hf"`` a Hugging Face Hub repo ``"owner/repo"`` at
        ``revision`` (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME``, ``HF_HUB_OFFLINE`` apply; ``hub_options`` are
        ``adapterhub.hub.hf.download_adapter_repo``'s). Everything is checked before the model is changed: on any
        error the model is left as it was. Returns the adapter's name."""
        from adapterhub.io.loading import read_any_adapter_dir

        if source == "hf":
            from adapterhub.hub.hf import download_adapter_repo

            directory = download_adapter_repo(str(adapter_name_or_path), revision=revision, **hub_options)
        elif source is not None:
            raise ConfigError(
                f"Unknown source {source!r}; use source='hf' or leave it out (a folder or our hub)."
            )
        elif revision is not None:
            raise ConfigError(
                "revision= is for source='hf'; on our hub add the version to the name ('...:3')."
            )
        else:
            directory = Path(adapter_name_or_path)
            if not directory.is_dir():
                directory = self._resolve_remote(str(adapter_name_or_path), **hub_options)
        record = read_any_adapter_dir(
            directory, spec=self._spec, with_head=with_head, model=self.model_info()
        )
        return self.add_adapter_from_record(
            record, load_as=load_as, set_active=set_active, with_head=with_head, overwrite_ok=overwrite_ok
        )

    def push_adapter_to_hf(
        self,
        repo_id: str,
        name: str,
        *,
        layout: str = "adapterhub",
        with_head: bool = True,
        endpoint: str | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        **card: Any,
    ) -> dict[str, str]:
        """Upload adapter ``name`` to the Hugging Face Hub repo ``repo_id`` (created when missing) in ``layout``
        (``"adapterhub"``, ``"adapters"`` or ``"peft"``) with a model card. ``card``: ``task``, ``subtask``,
        ``language``, ``adapter_type``, ``dataset``, ``metrics``, ``license``, ``description``, ``tags`` (see
        ``adapterhub.hub.hf_card.adapter_card``). Returns ``{"repo_id", "commit", "url"}``."""
        from adapterhub.hub.hf import push_adapter_dir_to_hf
        from adapterhub.hub.hf_card import adapter_card

        info = self.model_info()
        method = str(self.adapter_record(name, with_head=False).config.get("method", ""))
        readme = adapter_card(
            name=name,
            layout=layout,
            method=method,
            base_model=info.model_name,
            model_type=info.model_type,
            repo_id=repo_id,
            **card,
        )
        with tempfile.TemporaryDirectory(prefix="adapterhub-hf-push-") as tmp:
            directory = self.save_adapter(Path(tmp) / name, name, with_head=with_head, layout=layout)
            return push_adapter_dir_to_hf(
                directory,
                repo_id,
                readme=readme,
                endpoint=endpoint,
                token=token,
                commit_message=commit_message,
                private=private,
            )

    def push_adapter(
        self,
        name: str,
        *,
        owner: str,
        task: str | None = None,
        subtask: str | None = None,
        with_head: bool = True,
        **card: Any,
    ) -> dict[str, Any]:
        """Publish adapter ``name`` (with its head) to the hub as the next version of ``@owner/name``.

        ``card`` holds the rest of the adapter card (``license``, ``description``, ``citation``, ``metrics``,
        ``language``, ``adapter_type``, ``token``, ``hub_url``; see ``adapterhub.hub.client.push_adapter_dir``)."""
        from adapterhub.hub.client import push_adapter_dir

        with tempfile.TemporaryDirectory(prefix="adapterhub-push-") as tmp:
            directory = self.save_adapter(Path(tmp) / name, name, with_head=with_head)
            return push_adapter_dir(directory, owner=owner, name=name, task=task, subtask=subtask, **card)

    def _resolve_remote(self, identifier: str, **hub_options: Any) -> Path:
        looks_local = os.sep in identifier and "@" not in identifier and ":" not in identifier
        if looks_local or identifier.startswith((".", "~")):
            raise AdapterFileError(
                f"No adapter directory at {identifier!r} (it does not exist or is not a directory)."
            )
        try:
            from adapterhub.hub.client import resolve_to_local_dir
        except ImportError as error:
            raise AdapterFileError(
                f"{identifier!r} is not a local directory, and the hub client is not available ({error}). "
                "Pass the path of a saved adapter directory, or install adapterhub[hub]."
            ) from None
        info = self.model_info()
        return resolve_to_local_dir(
            identifier,
            model_type=info.model_type,
            model_name=info.model_name,
            hidden_size=info.hidden_size,
            **hub_options,
        )

    def add_adapter_from_record(
        self,
        record: AdapterRecord,
        *,
        load_as: str | None = None,
        set_active: bool = False,
        with_head: bool = True,
        overwrite_ok: bool = False,
    ) -> str:
        prepared = self.prepare_adapter_from_record(
            record, load_as=load_as, set_active=set_active, with_head=with_head, overwrite_ok=overwrite_ok
        )
        return self.add_prepared_adapter(prepared)

    def prepare_adapter_from_record(
        self,
        record: AdapterRecord,
        *,
        load_as: str | None = None,
        set_active: bool = False,
        with_head: bool = True,
        overwrite_ok: bool = False,
    ) -> PreparedAdapter:
        """Every check and the slow work of ``add_adapter_from_record`` (build the method's module, load its
        tensors, build its head, move it to the model's device and dtype) WITHOUT changing the model: it only reads
        the model, so it may run in another thread while the model runs forward passes (a server loading an adapter
        beside its decoding steps). ``add_prepared_adapter`` then puts it in, which is quick."""
        name = check_name(load_as or record.name)
        if name in self._store.adapters and not overwrite_ok:
            raise AdapterExistsError(
                f"An adapter named {name!r} already exists. Pass overwrite_ok=True to replace it or load_as='other-name'."
            )
        dims = self.model_dims()  # once per load: the checks and the module read the same
        self._check_compatible(record.model, f"adapter {record.name!r}", dims)
        config = resolve_config(record.config)
        tensors = record.tensors
        if not with_head and getattr(
            config, "modules_to_save", None
        ):  # the adapter without its module copies
            config = config.replace(modules_to_save=None)  # type: ignore[attr-defined]
            tensors = {k: v for k, v in tensors.items() if not k.startswith("saved.")}
        self._check_carries(config)
        # built to receive the file's tensors: methods that declare it skip their initialisers (AdapterModule
        # .build_for_load); load_exact below sets every parameter and persistent buffer, or raises for a missing one
        module = method_for_config(config).build_for_load(name, config, dims)
        self._check_base_sharing(name, module)
        self._bind_saved(module)
        tensors = module.adopt_tensors(tensors)
        if module.modifies_base():
            # what leaves the base is computed from it as on add (peft does the same on load); initial factors the
            # file holds (ours; pissa_niter's are random) replace the computed ones
            module.init_from_base(self._base_linear)
            computed = module.state_dict()
            tensors = {
                **{k: v for k, v in computed.items() if k.endswith((".initial_A", ".initial_B"))},
                **tensors,
            }
        self._check_saved_fit(module, tensors)
        load_exact(module, tensors, f"adapter {record.name!r}")
        apply_head = (
            self._prepare_head(record.head, name, overwrite_ok=overwrite_ok)
            if with_head and record.head is not None
            else None
        )
        placed = (
            not module.modifies_base()
        )  # a base-changing one is placed after it changed the base, as on add
        return PreparedAdapter(
            name, self._place(module) if placed else module, apply_head, set_active, overwrite_ok, placed
        )

    def add_prepared_adapter(self, prepared: PreparedAdapter) -> str:
        """Put an adapter from ``prepare_adapter_from_record`` into the model (run where the model's passes run:
        the model changes here). What may have changed since the preparation is checked again."""
        name, module = prepared.name, prepared.module
        if name in self._store.adapters and not prepared.overwrite_ok:
            raise AdapterExistsError(
                f"An adapter named {name!r} already exists. Pass overwrite_ok=True to replace it or load_as='other-name'."
            )
        self._check_base_sharing(name, module)
        self._prepare_points(module)
        # every check passed: change the model
        self._change_base(module, restore=False)
        self._store.adapters[name] = module if prepared.placed else self._place(module)
        self._store.changed()
        if prepared.apply_head is not None:
            prepared.apply_head()
        if prepared.set_active:
            self.set_active_adapters(name)
        return name

    # ------------------------------------------------------------------ base model save
    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        """The base model's ``save_pretrained`` without adapterhub's modules (save those with ``save_adapter``).

        Warns when trainable adapters or heads are left out (e.g. a stock ``transformers.Trainer`` checkpoint
        during adapter training: use ``adapterhub.training.AdapterTrainer``, whose checkpoints hold them), and when
        merged adapters are in the saved weights."""
        module = self._module()
        if self._store.merged:
            warnings.warn(
                f"save_pretrained saves weights with adapter(s) {list(self._store.merged)} merged into them: the "
                "saved model computes base + adapter. Call model.unmerge_adapter() first to save the base weights.",
                stacklevel=2,
            )
        if "state_dict" not in kwargs:
            kwargs["state_dict"] = {
                k: v for k, v in module.state_dict().items() if not k.startswith(STORE_ATTR + ".")
            }
            named = list(module.named_parameters())
            left_out = [n for n, p in named if n.startswith(STORE_ATTR + ".") and p.requires_grad]
            base_frozen = not any(p.requires_grad for n, p in named if not n.startswith(STORE_ATTR + "."))
            if left_out and base_frozen:  # adapter training (train_adapter): these weights are the point
                warnings.warn(
                    f"save_pretrained saves the base model only; {len(left_out)} trainable adapter/head tensors are "
                    "not in it. Save them with model.save_adapter(dir, name), or train with "
                    "adapterhub.training.AdapterTrainer, whose checkpoints hold them.",
                    stacklevel=2,
                )
        return super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]
