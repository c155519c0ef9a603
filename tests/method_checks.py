"""Checks shared by the method tests (tests/methods) and tests/architectures: building perturbed adapters, outputs
under a setup, hook counts, training steps, round trips, merging, row blocks, and parity with peft."""

from __future__ import annotations

from typing import Any

import torch

import adapterhub
from adapterhub import Average, BatchSplit, Parallel, Split
from adapterhub.methods.base import MODULE_LAYER
from adapterhub.methods.lora import LoRAAdapter
from adapterhub.runtime.injection import AdapterHook
from adapterhub.runtime.packing import PackedRow
from tiny_models import build


def perturb(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)


def make(arch: str, config: str, names=("a", "b"), kind: str = "base"):
    model = adapterhub.init(build(arch, kind))
    for i, name in enumerate(names):
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], seed=10 + i)
    return model


def make_inputs():
    torch.manual_seed(0)
    ids = torch.randint(3, 90, (3, 6))
    mask = torch.ones_like(ids)
    mask[2, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


ACTIVE = object()


def hidden(model, inputs, setup=None):
    with torch.no_grad():
        if setup is ACTIVE:
            return model(**inputs).last_hidden_state
        with model.adapter_setup(setup):
            return model(**inputs).last_hidden_state


def count_adapter_hooks(model) -> int:
    """How many of adapterhub's forward (pre-)hooks are registered anywhere in ``model``."""
    return sum(
        isinstance(hook, AdapterHook)
        for module in model.modules()
        for hooks in (module._forward_hooks, module._forward_pre_hooks)
        for hook in hooks.values()
    )


def check_training_step(model, inputs, name="a"):
    model.add_classification_head(name, num_labels=2)
    model.train_adapter(name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**inputs, labels=torch.tensor([0, 1, 1])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed
    assert all(n.startswith((f"_adapterhub.adapters.{name}.", f"_adapterhub.heads.{name}.")) for n in changed)
    return changed


def check_round_trip(arch, model, inputs, tmp_path, method):
    expected = hidden(model, inputs, "a")
    model.save_adapter(tmp_path / "a", "a")
    fresh = adapterhub.init(build(arch))
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(hidden(fresh, inputs, ACTIVE), expected)
    from adapterhub.io.manifest import inspect_adapter_dir

    manifest = inspect_adapter_dir(tmp_path / "a")
    assert manifest.method == method and manifest.num_parameters == model.adapter_summary()["a"].parameters


def check_merge(model, inputs):
    model.set_active_adapters("a")
    unmerged = hidden(model, inputs, ACTIVE)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("_adapterhub")}
    model.merge_adapter("a")
    assert model.merged_adapters == ["a"]
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), unmerged, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        if name in weights:  # (W + dW) - dW: a few float32 ulps of the weight's own size
            torch.testing.assert_close(param, weights[name], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        hidden(model, inputs, ACTIVE), unmerged, atol=1e-6, rtol=1e-5
    )  # float rounding


def check_row_blocks(model, inputs):
    single = {n: hidden(model, inputs, n) for n in "ab"}
    for sizes in ([1, 2], [2, 1]):
        out = hidden(model, inputs, BatchSplit("a", "b", batch_sizes=sizes))
        rows, start = [], 0
        for name, size in zip("ab", sizes, strict=True):
            rows.append(hidden(model, {k: v[start : start + size] for k, v in inputs.items()}, name))
            start += size
        torch.testing.assert_close(out, torch.cat(rows), atol=1e-5, rtol=0)
    with torch.no_grad(), model.adapter_setup(Parallel("a", "b")):
        parallel = model(**inputs).last_hidden_state
    torch.testing.assert_close(parallel[0], single["a"], atol=1e-5, rtol=0)
    torch.testing.assert_close(parallel[1], single["b"], atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden(model, inputs, Average("a", "a")), single["a"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        hidden(model, inputs, Split("a", "b", split_index=100)), single["a"], atol=1e-5, rtol=0
    )


def copy_peft_classifier(theirs, ours) -> None:
    """Copy the classifier peft trains (its ``modules_to_save`` copy of the built-in head) into ``ours``."""
    classifier = {
        n.split("modules_to_save.default.")[1]: p
        for n, p in theirs.named_parameters()
        if ".classifier.modules_to_save.default." in n
    }
    assert classifier  # peft trains a copy of the built-in head
    with torch.no_grad():
        for key, value in classifier.items():
            ours.classifier.get_parameter(key).copy_(value)


def check_matches_peft_then_merged(ours, theirs, name: str = "x") -> None:
    """``ours`` (adapter ``name`` active, weights copied from peft's ``theirs``) gives peft's logits within 1e-5,
    and still does after ``merge_adapter(name)``."""
    copy_peft_classifier(theirs, ours)
    inputs = make_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).logits
        got = ours(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    ours.merge_adapter(name)
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, expected, atol=1e-5, rtol=0)


def peft_lora_paths(theirs) -> list[str]:
    """The module paths of peft model ``theirs`` that hold a LoRA layer of adapter ``default``."""
    return [
        name
        for name, module in theirs.base_model.model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    ]


def our_lora_layer(ours, path: str, name: str = "x"):
    """Our LoRA layer of adapter ``name`` at module ``path``."""
    adapter = ours._adapterhub.adapters[name]
    [(layer, point)] = [key for key, p in adapter.module_paths().items() if p == path]
    return adapter.layer_at(layer, ("module", path) if layer == MODULE_LAYER else point)


def perturb_lora_b(theirs, ours, seed: int = 7) -> None:
    """The same change of every B in both (training's stand-in: outputs then differ from the base's)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for path in sorted(peft_lora_paths(theirs)):
            mine = our_lora_layer(ours, path)
            delta = torch.randn(mine.lora_B.shape, generator=generator) * 0.05
            mine.lora_B.add_(delta)
            theirs.base_model.model.get_submodule(path).lora_B["default"].weight.add_(delta)


def check_base_init_matches_peft(theirs, ours, outputs) -> None:
    """A base-modifying LoRA init (adapter ``x`` in ``ours``, ``default`` in peft's ``theirs``): the same targets,
    ``A``, ``B`` and residual base ``W - s B A`` within 1e-5, the same ``outputs(model)``, and still so after the
    same change of every ``B``."""
    paths = peft_lora_paths(theirs)
    assert sorted(paths) == sorted(ours._adapterhub.adapters["x"].module_paths().values())
    for path in paths:
        module = theirs.base_model.model.get_submodule(path)
        mine = our_lora_layer(ours, path)
        torch.testing.assert_close(mine.lora_A, module.lora_A["default"].weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(mine.lora_B, module.lora_B["default"].weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            ours.get_submodule(path).weight, module.base_layer.weight, atol=1e-5, rtol=0
        )  # the residual base W - s B A
    torch.testing.assert_close(outputs(ours), outputs(theirs), atol=1e-5, rtol=0)
    perturb_lora_b(theirs, ours)
    torch.testing.assert_close(outputs(ours), outputs(theirs), atol=1e-5, rtol=0)


def randomize_peft_params(theirs, markers, seed: int = 5, std: float = 0.3) -> None:
    """Overwrite every parameter of peft model ``theirs`` whose name contains one of ``markers`` with seeded normal
    draws times ``std``, in parameter order."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if any(marker in name for marker in markers):
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def randomize_peft_lora(theirs, seed: int = 5, std: float = 0.3) -> None:
    """Overwrite every LoRA parameter of peft model ``theirs`` (``lora_`` in its name; B starts at zero) with
    seeded normal draws times ``std``, in parameter order."""
    randomize_peft_params(theirs, ("lora_",), seed, std)


def save_trained_with_residual(theirs, directory, residual):
    """A base-modifying peft LoRA ``theirs`` "trained" (every ``lora_B`` moved by seeded noise), saved into
    ``directory``, and its residual model: ``residual`` (a fresh copy of the original model) with each target's
    weight replaced by peft's residual base. Returns ``residual``."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for path in peft_lora_paths(theirs):
            b = theirs.base_model.model.get_submodule(path).lora_B["default"].weight
            b.add_(torch.randn(b.shape, generator=generator) * 0.05)
    theirs.save_pretrained(directory)
    with torch.no_grad():
        for path in peft_lora_paths(theirs):
            residual.get_submodule(path).weight.copy_(
                theirs.base_model.model.get_submodule(path).base_layer.weight
            )
    return residual


def packed_logits(
    model: Any, setups: list[Any], lengths: list[int] | None = None, seed: int = 3
) -> torch.Tensor:
    """One packed row through ``model``: slice ``k`` of ``lengths[k]`` tokens (default 1 each: a decode-like step)
    under ``setups[k]``; ``(1, T, V)`` logits."""
    lengths = [1] * len(setups) if lengths is None else lengths
    ids = torch.randint(3, 99, (1, sum(lengths)), generator=torch.Generator().manual_seed(seed))
    row = PackedRow(setups, lengths)
    with torch.no_grad(), model.adapter_setup(row.setup):
        out = model(
            input_ids=ids, position_ids=row.position_ids(), attention_mask=row.attention_mask(torch.float32)
        )
    return out.logits  # (1, T, V)


def one_by_one(monkeypatch: Any, run: Any) -> torch.Tensor:
    """``run()`` with LoRA's grouping refused: the interpreter runs each slice / row block through its own adapter."""
    with monkeypatch.context() as patch:
        patch.setattr(LoRAAdapter, "split_grouped", lambda *a, **k: None)
        patch.setattr(LoRAAdapter, "batch_split_grouped", lambda *a, **k: None)
        return run()  # type: ignore[no-any-return]


def check_cp_cores(theirs: Any, method: str, options: dict[str, Any], effective: bool) -> None:
    """peft built its CP cores (``hada_t1`` / ``hada_t2`` for LoHa, ``lokr_t2`` for LoKr) exactly where
    ``use_effective_conv2d`` makes them: on when ``effective`` and (LoHa, or LoKr with ``r == 1``)."""
    names = {n.split(".")[-2] for n, _ in theirs.named_parameters() if "_t1." in n or "_t2." in n}
    cores = {"hada_t1", "hada_t2"} if method == "loha" else {"lokr_t2"}
    assert names == (cores if effective and (method == "loha" or options["r"] == 1) else set())


def load_peft_lycoris(ours: Any, theirs: Any, folder: Any) -> dict[str, tuple[int, ...]]:
    """``theirs`` (a peft LoHa / LoKr model) saved to ``folder`` and loaded into ``ours`` as the active ``"p"``;
    its factors have peft's names and shapes. Returns ``{our parameter name: shape}``."""
    theirs.save_pretrained(folder)
    ours.load_adapter(folder, load_as="p", set_active=True)
    shapes = {n: tuple(p.shape) for n, p in ours._adapterhub.adapters["p"].named_parameters()}
    assert shapes == {
        n.replace("base_model.model.", "by_name.").replace(".default", ""): tuple(p.shape)
        for n, p in theirs.named_parameters()
        if ".hada_" in n or ".lokr_" in n
    }
    return shapes


def fit_mse(model: Any, run: Any, target: torch.Tensor, steps: int, lr: float = 1e-2) -> list[float]:
    """``steps`` Adam updates (``lr``) of ``model``'s trainable parameters on ``mse(run(), target)``; the losses
    before each update."""
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(run(), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses
