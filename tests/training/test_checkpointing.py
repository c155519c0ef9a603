"""Gradient checkpointing (reentrant and non-reentrant) with every method and with compositions: the gradient of
every trainable parameter equals the one without checkpointing, also when the setup was chosen per call by a
``with model.adapter_setup(...)`` block that has exited before ``backward()``."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Fuse, Parallel, Stack
from adapterhub.runtime.checkpointing import StatefulCheckpoint
from method_checks import perturb
from tiny_models import build, make_inputs

METHODS = [
    "lora",
    "dora",
    "ia3",
    "pfeiffer",
    "houlsby",
    "par_bn",
    "compacter[reduction_factor=4]",
    "prefix_tuning",
    "prompt_tuning",
    "mam",
    "unipelt",
    "pfeiffer+inv",
    "vera[r=4,targets=[q,v,ffn_out]]",
    "oft[oft_block_size=8,coft=true,eps=0.05,targets=[q,v,ffn_in]]",
    "boft[boft_block_size=4,boft_n_butterfly_factor=2,targets=[q,v]]",
    "noreft[prefix_positions=2,suffix_positions=1,r=2]",
]
MODES = {"reentrant": True, "non-reentrant": False}
NO_DROPOUT = {
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "llama": {},
}


def _model(arch: str):
    kind = "causal_lm" if arch == "llama" else "classification"
    return adapterhub.init(build(arch, kind, **NO_DROPOUT[arch]))


def _loss(model, arch: str, inputs) -> torch.Tensor:
    if arch == "llama":  # next-token loss on the input's positions (prompt tuning prepends virtual tokens)
        ids = inputs["input_ids"]
        logits = model(**inputs).logits[:, -ids.shape[1] :]  # (batch, seq, vocab)
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    return model(**inputs, labels=torch.tensor([0, 1, 1])).loss


def _grads(model, arch, inputs, setup, checkpoint: bool | None):
    """Gradients of every trainable parameter after one backward; ``checkpoint``: None = off, else reentrant?"""
    model.train()
    model.zero_grad(set_to_none=True)
    if checkpoint is None:
        model.gradient_checkpointing_disable()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpoint})
    torch.manual_seed(0)
    with model.adapter_setup(setup):  # exits before backward: the recompute must still use `setup`
        loss = _loss(model, arch, inputs)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return grads


def _assert_same(expected, got):
    assert expected.keys() == got.keys()
    missing = [n for n, g in expected.items() if g is not None and got[n] is None]
    assert not missing, f"no gradient under checkpointing for {missing[:3]}"
    assert any(g is not None and g.abs().sum() > 0 for g in expected.values())
    for name, grad in expected.items():
        if grad is not None:
            torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("method", METHODS)
def test_method_gradients_match_without_checkpointing(method, arch, mode):
    model = _model(arch)
    model.add_adapter("a", config=method)
    perturb(model._adapterhub.adapters["a"], seed=3)
    model.train_adapter("a")
    model.set_active_adapters(None)  # the per-call block is the only place "a" is active
    inputs = make_inputs()
    expected = _grads(model, arch, inputs, "a", None)
    _assert_same(expected, _grads(model, arch, inputs, "a", MODES[mode]))


def _composed(arch: str, block: str):
    model = _model(arch)
    for i, name in enumerate("ab"):
        model.add_adapter(name, config="pfeiffer" if block == "fuse" else "lora")
        perturb(model._adapterhub.adapters[name], seed=5 + i)
    if block == "fuse":
        model.add_adapter_fusion(Fuse("a", "b"))
        model.train_adapter_fusion(Fuse("a", "b"))
        return model, Fuse("a", "b")
    if block == "parallel":
        for name in "ab":
            model.add_classification_head(name, num_labels=2)
        model.train_adapter(Parallel("a", "b"))
        return model, Parallel("a", "b")
    model.train_adapter(Stack("a", "b"))
    return model, Stack("a", "b")


def _parallel_loss(model, inputs):
    outputs = model(**inputs, labels=torch.tensor([0, 1, 1]))
    return sum(output.loss for output in outputs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("arch", "block"), [("llama", "stack"), ("bert", "fuse"), ("bert", "parallel")])
def test_composition_chosen_per_call_is_recomputed_under_that_call(arch, block, mode):
    """The active setup is a single adapter (or none) while ``backward()`` runs; the forward ran under a block."""
    model, setup = _composed(arch, block)
    model.set_active_adapters("a")  # what is active when backward() recomputes the layers
    inputs = make_inputs()

    def grads(checkpoint):
        model.train()
        model.zero_grad(set_to_none=True)
        if checkpoint is None:
            model.gradient_checkpointing_disable()
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpoint})
        torch.manual_seed(0)
        with model.adapter_setup(setup):
            loss = _parallel_loss(model, inputs) if block == "parallel" else _loss(model, arch, inputs)
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    expected = grads(None)
    assert all(g is not None for n, g in expected.items() if ".b." in n)  # b ran, under the block only
    _assert_same(expected, grads(MODES[mode]))


def test_wrapping_survives_enable_before_init_and_deinit_unwraps():
    model = build("llama", "causal_lm")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    adapterhub.init(model)
    layers = [m for m in model.modules() if "_gradient_checkpointing_func" in m.__dict__]
    assert layers and all(isinstance(m._gradient_checkpointing_func, StatefulCheckpoint) for m in layers)
    adapterhub.deinit(model)
    assert not any(isinstance(m._gradient_checkpointing_func, StatefulCheckpoint) for m in layers)


def test_reentrant_gets_input_grads_without_transformers_hook():
    """transformers' ``enable_input_require_grads`` hook removed: reentrant checkpointing still gives every adapter
    parameter its gradient (the wrapper makes the layer input require grad), equal to the one without."""
    model = _model("llama")
    model.add_adapter("a", config="lora")
    perturb(model._adapterhub.adapters["a"], seed=3)
    model.train_adapter("a")
    inputs = make_inputs()
    expected = _grads(model, "llama", inputs, "a", None)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.disable_input_require_grads()
    model.zero_grad(set_to_none=True)
    with model.adapter_setup("a"):
        loss = _loss(model, "llama", inputs)
    loss.backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    _assert_same(expected, got)


@pytest.mark.parametrize("mode", MODES)
def test_recompute_in_another_thread_uses_the_forward_threads_setup(mode):
    """On a GPU autograd recomputes in its own thread: there neither the forward thread's ``adapter_setup`` block
    nor its ``CallState`` exist. Backward in a fresh thread must give the same gradients."""
    import threading

    model, setup = _composed("bert", "parallel")
    model.set_active_adapters(None)
    inputs = make_inputs()

    def grads(checkpoint, other_thread):
        model.train()
        model.zero_grad(set_to_none=True)
        if checkpoint is None:
            model.gradient_checkpointing_disable()
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpoint})
        torch.manual_seed(0)  # the heads' dropout
        with model.adapter_setup(setup):
            loss = _parallel_loss(model, inputs)
        if other_thread:
            errors = []

            def backward():
                try:
                    loss.backward()
                except Exception as error:  # re-raised below, in the test's thread
                    errors.append(error)

            worker = threading.Thread(target=backward)
            worker.start()
            worker.join()
            if errors:
                raise errors[0]
        else:
            loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    base = grads(None, False)
    _assert_same(base, grads(MODES[mode], False))
    _assert_same(base, grads(MODES[mode], True))
