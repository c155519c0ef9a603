"""Regression tests for fixes made with the method-generic core (per-call state, spec checks, fusion and head
edge cases, deinit, pickling, freeing). Each test's docstring says what used to happen."""

from __future__ import annotations

import copy
import dataclasses
import gc
import io
import threading
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub
from adapterhub.errors import AdapterExistsError, ConfigError, UnsupportedArchitectureError
from adapterhub.spec import architecture as architecture_spec
from adapterhub.spec import architectures
from adapterhub.spec.architectures import InputRef
from adapterhub.spec.composition import Fuse, Parallel
from tiny_models import build, make_inputs, perturb

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _hook_counts(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    return {
        name: (len(module._forward_hooks), len(module._forward_pre_hooks))
        for name, module in model.named_modules()
    }


def _replace_site(monkeypatch: pytest.MonkeyPatch, model_type: str, **sites: object) -> None:
    """Register, for this test only, a copy of ``model_type``'s spec with ``sites`` (None drops a site)."""
    spec = architectures.spec_for_model_type(model_type)
    new_sites = {k: v for k, v in {**spec.sites, **sites}.items() if v is not None}
    monkeypatch.setitem(architecture_spec._REGISTRY, model_type, dataclasses.replace(spec, sites=new_sites))


# ------------------------------------------------------------------------------------------------ 1. threads


def test_concurrent_calls_with_different_adapters_and_heads_match_sequential_calls():
    """8 threads, each with its own adapter and flexible head (one of them under Parallel), run forward passes
    with labels at the same time. Used to: per-call state (the head's labels, the base output, the Parallel
    batch) lived on the shared model, so concurrent calls mixed each other's heads, labels and losses."""
    model = adapterhub.init(build("bert"))
    names = [f"a{i}" for i in range(8)]
    for i, name in enumerate(names):
        model.add_adapter(name, config="pfeiffer")
        perturb(model._adapterhub.adapters[name], seed=10 + i)
        model.add_classification_head(name, num_labels=2 + i % 3)
        perturb(model._adapterhub.heads[name], seed=100 + i)
    inputs = make_inputs()
    setups = {name: name for name in names[:7]}
    setups["par"] = Parallel("a6", "a7")

    def call(setup):
        with model.adapter_setup(setup), torch.no_grad():
            out = model(**inputs, labels=torch.tensor([0, 1, 1]))
        if isinstance(setup, Parallel):
            return [(o.logits, o.loss) for o in out.outputs] + [(None, out.loss)]
        return [(out.logits, out.loss)]

    expected = {key: call(setup) for key, setup in setups.items()}
    rounds = 15
    barrier = threading.Barrier(len(setups))
    errors: list[BaseException] = []
    mismatches: list[str] = []

    def worker(key):
        try:
            for r in range(rounds):
                barrier.wait(timeout=60)
                got = call(setups[key])
                for (gl, gloss), (el, eloss) in zip(got, expected[key], strict=True):
                    if (gl is not None and not torch.allclose(gl, el, atol=1e-6)) or not torch.allclose(
                        gloss, eloss, atol=1e-6
                    ):
                        mismatches.append(f"{key} round {r}")
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(key,)) for key in setups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert not mismatches, mismatches


# ------------------------------------------------------------------------------------------------ 2./3. spec


def test_residual_input_not_captured_raises(monkeypatch):
    """The spec names an input the module is not called with. Used to: the residual was not recorded and the
    site was skipped silently (the adapter had no effect)."""
    _replace_site(
        monkeypatch,
        "bert",
        ffn=dataclasses.replace(
            architectures.BERT.sites["ffn"], residual=InputRef("output", 5, "no_such_keyword")
        ),
    )
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="pfeiffer", set_active=True)
    with pytest.raises(UnsupportedArchitectureError, match="residual stream"):
        model(**make_inputs())


def test_config_sites_missing_from_the_architecture_raise_at_add_adapter(monkeypatch):
    """A bottleneck config at ``attn`` and ``ffn`` on an architecture with only ``ffn``. Used to: add_adapter
    accepted it and the attn adapters were never run (no error, silently fewer adapters)."""
    _replace_site(monkeypatch, "bert", attn=None)
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match="attn"):
        model.add_adapter("a", config="houlsby")
    assert not model.adapters
    model.add_adapter("b", config="pfeiffer")  # ffn only: fine


# ------------------------------------------------------------------------------------------------ 4./5. losses


def test_fusion_regulariser_with_return_dict_false():
    """Training a fusion adds λ·||I - V||² to the loss. Used to: with return_dict=False (a tuple output) the term
    was not added."""
    model = adapterhub.init(build("bert", "classification", **NO_DROPOUT))
    for name in ("a", "b"):
        model.add_adapter(name, config="pfeiffer")
    model.add_adapter_fusion(Fuse("a", "b"))
    perturb(model._adapterhub.fusions["a,b"], std=0.1)
    inputs, labels = make_inputs(), torch.tensor([0, 1, 1])
    model.train_adapter_fusion(Fuse("a", "b"))
    term = model.fusion_regularization_loss()
    assert term is not None and term.item() > 0
    as_dict = model(**inputs, labels=labels).loss
    as_tuple = model(**inputs, labels=labels, return_dict=False)[0]
    model.eval()
    plain = model(**inputs, labels=labels).loss
    assert torch.allclose(as_dict, plain + term, atol=1e-6)
    assert torch.allclose(as_tuple, plain + term, atol=1e-6)


def test_static_head_loss_under_parallel_follows_problem_type():
    """Under Parallel each branch's loss from the model's own head follows ``config.problem_type``. Used to:
    the branch loss was cross-entropy whatever the problem type, which failed on (batch, num_labels) float labels
    ("Expected input batch_size (3) to match target batch_size (9)")."""
    model = adapterhub.init(
        build("bert", "classification", num_labels=3, problem_type="multi_label_classification")
    )
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, config="pfeiffer")
        perturb(model._adapterhub.adapters[name], seed=i + 1)
    inputs = make_inputs()
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    with torch.no_grad():
        with model.adapter_setup(Parallel("a", "b")):
            out = model(**inputs, labels=labels)
        for name in ("a", "b"):
            with model.adapter_setup(name):
                alone = model(**inputs, labels=labels)
            branch = out[name]
            assert torch.allclose(branch.logits, alone.logits, atol=1e-5)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(branch.logits, labels)
            assert torch.allclose(branch.loss, alone.loss, atol=1e-5)
            assert torch.allclose(branch.loss, bce, atol=1e-5)


# ------------------------------------------------------------------------------------------------ 6.-10. API


def test_train_adapter_trains_the_explicit_active_head():
    """``model.active_head = "h"`` then ``train_adapter("a")``. Used to: the head named like the adapter ("a")
    was unfrozen instead of the one the forward pass uses."""
    model = adapterhub.init(build("bert"))
    model.add_adapter("a")
    for head in ("a", "h", "other"):
        model.add_classification_head(head)
    model.active_head = "h"
    model.train_adapter("a")
    heads = model._adapterhub.heads
    assert all(p.requires_grad for p in heads["h"].parameters())
    assert not any(p.requires_grad for p in heads["a"].parameters())
    assert not any(p.requires_grad for p in heads["other"].parameters())


def test_load_adapter_with_an_existing_head_name_needs_overwrite_ok(tmp_path):
    """Loading an adapter whose head name the model has already. Used to: the existing head was replaced
    silently."""
    source = adapterhub.init(build("bert"))
    source.add_adapter("a")
    source.add_classification_head("a", num_labels=3)
    perturb(source._adapterhub.heads["a"], seed=5)
    source.save_adapter(tmp_path / "a", "a")

    target = adapterhub.init(build("bert"))
    target.add_classification_head("a", num_labels=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(AdapterExistsError, match="head"):
        target.load_adapter(tmp_path / "a")
    after = target.state_dict()
    assert not target.adapters and list(target.heads) == ["a"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    target.load_adapter(tmp_path / "a", overwrite_ok=True)
    assert target.has_adapter("a")
    for key, value in source._adapterhub.heads["a"].state_dict().items():
        assert torch.equal(target._adapterhub.heads["a"].state_dict()[key], value)


def _corrupt(weights) -> None:
    """Give the first tensor of a safetensors file a wrong shape (the file still reads)."""
    tensors = load_file(weights)
    key = next(iter(tensors))
    tensors[key] = torch.zeros(*[s + 1 for s in tensors[key].shape])
    save_file(tensors, weights)


@pytest.mark.parametrize("corrupt", ["fusion", "second_adapter"])
def test_load_adapter_fusion_failure_removes_the_adapters_it_loaded(tmp_path, corrupt):
    """Loading fails after adapters were loaded from the fusion's directory: the fusion's weights do not fit, or
    the second of the missing adapters does not. Those adapters are removed again. Used to (old main): with a
    corrupt fusion file the rollback worked already, but when a later adapter failed to load the earlier ones
    were loaded outside the rollback and stayed on the model."""
    source = adapterhub.init(build("bert"))
    for name in ("a", "b", "c"):
        source.add_adapter(name)
    source.add_adapter_fusion(Fuse("a", "b", "c"))
    directory = source.save_adapter_fusion(tmp_path / "fusion", Fuse("a", "b", "c"), with_head=False)
    if corrupt == "fusion":
        _corrupt(directory / "fusion.safetensors")
    else:
        _corrupt(directory / "adapters" / "c" / "adapter.safetensors")

    target = adapterhub.init(build("bert"))
    target.add_adapter("a")  # present: "b" and "c" are loaded from the directory
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(adapterhub.AdapterHubError):
        target.load_adapter_fusion(directory)
    assert list(target.adapters) == ["a"]
    assert not target.fusions
    after = target.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fuse_of_adapters_with_different_placements_raises():
    """``pfeiffer`` and ``pfeiffer[original_ln_before=false]`` sit at the same sites but take their input at
    different places. Used to: the fusion was added and computed one input for both (wrong for one of them)."""
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="pfeiffer")
    model.add_adapter("b", config="pfeiffer[original_ln_before=false]")
    with pytest.raises(ConfigError, match="placed differently"):
        model.add_adapter_fusion(Fuse("a", "b"))
    assert not model.fusions


def test_delete_adapter_removes_its_fusions():
    """Used to: the fusion stayed, listed by model.fusions, over an adapter that no longer existed."""
    model = adapterhub.init(build("bert"))
    for name in ("a", "b", "c"):
        model.add_adapter(name)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.add_adapter_fusion(Fuse("b", "c"))
    model.delete_adapter("a")
    assert list(model.fusions) == ["b,c"]
    assert list(model._adapterhub.fusions.keys()) == ["b,c"]


# ------------------------------------------------------------------------------------------------ 11. deinit


# a causal-LM head needs a decoder
DEINIT_MATRIX = [
    (arch, extra)
    for arch in ("bert", "gpt2", "llama")
    for extra in ("adapter", "flexible_head", "causal_lm_head")
    if arch != "bert" or extra != "causal_lm_head"
]


@pytest.mark.parametrize(("arch", "extra"), DEINIT_MATRIX)
def test_deinit_restores_the_model(arch, extra):
    """Used to: there was no adapterhub.deinit; the hooks, the store and the mixed class stayed for good."""
    model = build(arch)
    original_class = type(model)
    hooks_before = _hook_counts(model)
    fresh = build(arch)
    adapterhub.init(model)
    model.add_adapter("a", set_active=True)
    perturb(model._adapterhub.adapters["a"])
    if extra == "flexible_head":
        model.add_classification_head("a")
    if extra == "causal_lm_head":
        model.add_causal_lm_head("a")
    model(**make_inputs())
    returned = adapterhub.deinit(model)
    assert returned is model
    assert type(model) is original_class
    assert "_adapterhub" not in model._modules and not hasattr(model, "_adapterhub")
    assert _hook_counts(model) == hooks_before
    with torch.no_grad():
        got, want = model(**make_inputs()), fresh(**make_inputs())
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)
    adapterhub.init(model)  # can be initialised again
    assert not model.adapters


def test_deinit_with_a_merged_adapter_raises():
    """Used to: there was no deinit (and nothing protected a merged update from being left in the weights)."""
    model = adapterhub.init(build("bert"))
    try:
        model.add_adapter("m", config="lora", set_active=True)
    except ConfigError:
        pytest.skip("no mergeable method (LoRA) in this tree")
    model.merge_adapter("m")
    with pytest.raises(ConfigError, match="unmerge"):
        adapterhub.deinit(model)
    model.unmerge_adapter()
    adapterhub.deinit(model)


def test_deinit_is_exported():
    """Used to: ``adapterhub.deinit`` did not exist."""
    assert "deinit" in adapterhub.__all__
    assert callable(adapterhub.deinit)


# ------------------------------------------------------------------------------------------------ 12./13. lifetime


def test_model_is_freed_without_the_garbage_collector():
    """Used to: hooks and the store referred back to the model, so a model with adapters and heads lived on in
    a reference cycle until the cyclic garbage collector ran."""
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", set_active=True)
    model.add_classification_head("a")
    model(**make_inputs())
    ref = weakref.ref(model)
    gc.collect()
    gc.disable()
    try:
        del model
        assert ref() is None
    finally:
        gc.enable()


def test_pickle_and_deepcopy_of_an_initialised_model():
    """``torch.save(model)`` / ``torch.load`` and ``copy.deepcopy`` keep adapters, heads and the API. Used to:
    pickling failed on the dynamically made class (or the hooks' closures)."""
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", set_active=True)
    perturb(model._adapterhub.adapters["a"])
    model.add_classification_head("a", num_labels=3)
    perturb(model._adapterhub.heads["a"], seed=3)
    inputs, labels = make_inputs(), torch.tensor([0, 2, 1])
    with torch.no_grad():
        want = model(**inputs, labels=labels)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (loaded, copy.deepcopy(model)):
        assert other.active_adapters == "a" and other.active_head == "a"
        with torch.no_grad():
            got = other(**inputs, labels=labels)
        assert torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)
        other.add_adapter("b")  # the API works
        with other.adapter_setup("b"), torch.no_grad():
            assert other(**inputs).last_hidden_state.shape[:2] == inputs["input_ids"].shape
        assert "b" not in model.adapters
