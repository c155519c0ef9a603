"""Every block against a reference computed the slow way.

- BatchSplit: separate forward passes, one per adapter, on its rows;
- Parallel: each adapter alone (hidden states, head logits and loss), also with the batch replicated late;
- Split / Average: per-site references built from single-adapter site outputs on the full input (a different
  computation path from the interpreter, which slices first);
- Fuse: the paper's formula written per adapter (K and V applied to each adapter's output, in a loop).
"""

import contextlib

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.methods.bottleneck import enter_site, leave_site
from adapterhub.spec.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from tiny_models import build, make_inputs, perturb

ARCHS = ["bert", "llama", "distilbert", "gpt2"]
ATOL = 1e-5


def make_model(arch="bert", names=("a", "b", "c"), kind="base", config="pfeiffer", heads=False, **overrides):
    model = adapterhub.init(build(arch, kind, **overrides))
    for i, name in enumerate(names):
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], std=0.2, seed=10 + i)
        if heads:
            model.add_classification_head(name, num_labels=3)
            perturb(model._adapterhub.heads[name], std=0.3, seed=20 + i)
    return model


def hidden(model, inputs, setup):
    with torch.no_grad(), model.adapter_setup(setup):
        out = model(**inputs)
    return out.last_hidden_state


@contextlib.contextmanager
def site_reference(model, compute):
    """Replace the interpreter at every site by ``compute(layer, site, inputs, single)``, where ``single(name)``
    is adapter ``name``'s site output alone on the full input (or None where it does not sit)."""
    store = model._adapterhub

    def point_forward(layer, kind, site, inputs):
        if kind != "residual":
            return None

        def single(name):
            module = store.adapters[name]
            return module.forward_at(layer, (kind, site), inputs) if site in module.sites_at(layer) else None

        return compute(layer, site, inputs, single)

    store.point_forward = point_forward
    try:
        yield
    finally:
        del store.point_forward


def base_value(inputs):
    return inputs.h if inputs.norm is None else inputs.norm(inputs.h + inputs.residual)


# ------------------------------------------------------------------------------------------------ BatchSplit


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_split_equals_separate_forward_passes(arch, inputs):
    model = make_model(arch, heads=True)
    setup = BatchSplit("a", Stack("b", "c"), "c", batch_sizes=[1, 1, 1])
    with torch.no_grad():
        with model.adapter_setup(setup):
            model.active_head = "c"
            together = model(**inputs).logits
        rows = []
        for i, part in enumerate(["a", Stack("b", "c"), "c"]):
            with model.adapter_setup(part):
                row = {k: v[i : i + 1] for k, v in inputs.items()}
                rows.append(model(**row).logits)
    model.active_head = None
    torch.testing.assert_close(together, torch.cat(rows), atol=ATOL, rtol=0)


def test_batch_split_with_fusion_and_uneven_sizes(inputs):
    model = make_model("bert", names=("a", "b", "c", "d"))
    model.add_adapter_fusion(Fuse("b", "c"))
    perturb(model._adapterhub.fusions["b,c"], std=0.3, seed=5)
    out = hidden(model, inputs, BatchSplit("a", Fuse("b", "c"), "d", batch_sizes=[2, 0, 1]))
    assert torch.allclose(out[:2], hidden(model, {k: v[:2] for k, v in inputs.items()}, "a"), atol=ATOL)
    assert torch.allclose(out[2:], hidden(model, {k: v[2:] for k, v in inputs.items()}, "d"), atol=ATOL)
    out = hidden(model, inputs, BatchSplit("a", Fuse("b", "c"), batch_sizes=[1, 2]))
    ref = hidden(model, {k: v[1:] for k, v in inputs.items()}, Fuse("b", "c"))
    assert torch.allclose(out[1:], ref, atol=ATOL)


def _separate_rows(model, inputs, names, sizes):
    """Each adapter alone on its rows, concatenated: the slow reference for BatchSplit."""
    rows, start = [], 0
    for name, size in zip(names, sizes, strict=True):
        if size:
            rows.append(hidden(model, {k: v[start : start + size] for k, v in inputs.items()}, name))
        start += size
    return torch.cat(rows)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("config", ["pfeiffer", "houlsby", "pfeiffer[scaling=learned]"])
@pytest.mark.parametrize("sizes", [[1, 1, 1], [2, 0, 1]])
def test_batch_split_of_alike_adapters_runs_grouped_and_equals_separate_passes(
    arch, config, sizes, inputs, monkeypatch
):
    import adapterhub.runtime.interpreter as composition

    model = make_model(arch, config=config)
    for i, name in enumerate("abc"):  # learned scalings away from 1 so that a mix-up of rows would show
        for param in model._adapterhub.adapters[name].parameters():
            if param.ndim == 1 and param.numel() == 1:
                param.data.fill_(0.5 + i)
    expected = _separate_rows(model, inputs, "abc", sizes)

    real = composition._run_chunks

    def no_chunks(*args, **kwargs):  # may run only where no adapter sits (and then changes nothing)
        out = real(*args, **kwargs)
        assert out is None, "BatchSplit of alike adapters fell back to per-chunk slicing"
        return out

    monkeypatch.setattr(composition, "_run_chunks", no_chunks)
    out = hidden(model, inputs, BatchSplit("a", "b", "c", batch_sizes=sizes))
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_grouped_batch_split_gives_each_adapter_the_gradient_of_its_own_rows(arch, inputs):
    model = make_model(arch, config="pfeiffer")
    model.eval()  # no dropout: the two ways must agree exactly

    def adapter_grads(loss_of):
        model.zero_grad(set_to_none=True)
        loss_of().backward()
        return {
            name: param.grad.clone()
            for name, param in model._adapterhub.adapters.named_parameters()
            if param.grad is not None
        }

    def together():
        with model.adapter_setup(BatchSplit("a", "b", "c", batch_sizes=[1, 0, 2])):
            return model(**inputs).last_hidden_state.pow(2).sum()

    def separately():
        total = 0
        for name, rows in (("a", slice(0, 1)), ("c", slice(1, 3))):
            with model.adapter_setup(name):
                total = (
                    total + model(**{k: v[rows] for k, v in inputs.items()}).last_hidden_state.pow(2).sum()
                )
        return total

    grouped, reference = adapter_grads(together), adapter_grads(separately)
    assert grouped.keys() == reference.keys()
    assert not any(key.startswith("b.") for key in grouped), "adapter b has no rows and must get no gradient"
    for key in reference:
        torch.testing.assert_close(grouped[key], reference[key], atol=1e-4, rtol=1e-4)


def test_batch_split_of_adapters_that_differ_falls_back_to_slices(inputs, monkeypatch):
    import adapterhub.runtime.interpreter as composition

    model = make_model("bert", names=("a",))
    model.add_adapter("wide", config="pfeiffer[reduction_factor=2]")
    model.add_adapter("houlsby", config="houlsby")
    for i, name in enumerate(("wide", "houlsby")):
        perturb(model._adapterhub.adapters[name], std=0.2, seed=30 + i)
    calls = []
    real = composition._run_chunks

    def counting_chunks(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.extend([] if out is None else [1])
        return out

    monkeypatch.setattr(composition, "_run_chunks", counting_chunks)
    for names in (("a", "wide", "a"), ("a", "houlsby", "a")):
        calls.clear()
        out = hidden(model, inputs, BatchSplit(*names, batch_sizes=[1, 1, 1]))
        assert calls, f"{names}: adapters of different width or placement must take the per-slice path"
        torch.testing.assert_close(out, _separate_rows(model, inputs, names, [1, 1, 1]), atol=ATOL, rtol=0)


def test_batch_split_sizes_must_match_the_batch(inputs):
    model = make_model("bert")
    with pytest.raises(ConfigError, match="sum to 2, but the batch has 3 rows"):
        hidden(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 1]))


# ------------------------------------------------------------------------------------------------ Parallel


@pytest.mark.parametrize("arch", ARCHS)
def test_parallel_equals_each_adapter_alone_with_heads_and_loss(arch, inputs):
    model = make_model(arch, heads=True)
    labels = torch.tensor([0, 2, 1])
    branches = ["a", Stack("b", "c")]
    with torch.no_grad():
        with model.adapter_setup(Parallel(*branches)):
            out = model(**inputs, labels=labels)
        alone = []
        for branch in branches:
            with model.adapter_setup(branch):
                alone.append(model(**inputs, labels=labels))
    assert out.names == ("a", "c") and out.logits.shape == (2, 3, 3)
    for i, ref in enumerate(alone):
        torch.testing.assert_close(out.logits[i], ref.logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(out[i].loss, ref.loss, atol=ATOL, rtol=0)
    assert torch.allclose(out["c"].logits, alone[1].logits, atol=ATOL)
    torch.testing.assert_close(out.loss, alone[0].loss + alone[1].loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_parallel_replicates_late_when_early_layers_have_no_adapter(arch, inputs):
    model = adapterhub.init(build(arch, num_hidden_layers=3))
    for i, name in enumerate(("lang", "a", "b")):
        config = "pfeiffer" if name == "lang" else "houlsby[leave_out=[0]]"
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], std=0.2, seed=i)
    calls = []
    layer1 = model.get_submodule("layers.1" if arch == "llama" else "encoder.layer.1")
    layer0 = model.get_submodule("layers.0" if arch == "llama" else "encoder.layer.0")
    layer0.register_forward_hook(
        lambda m, a, o: calls.append(("0", (o[0] if isinstance(o, tuple) else o).shape[0]))
    )
    layer1.register_forward_hook(
        lambda m, a, o: calls.append(("1", (o[0] if isinstance(o, tuple) else o).shape[0]))
    )
    out = hidden_parallel = None
    with torch.no_grad(), model.adapter_setup(Stack("lang", Parallel("a", "b"))):
        out = model(**inputs)
    hidden_parallel = out.last_hidden_state
    assert calls == [("0", 3), ("1", 6)]  # layer 0 ran once, the batch was replicated entering layer 1
    for i, name in enumerate("ab"):
        ref = hidden(model, inputs, Stack("lang", name))
        torch.testing.assert_close(hidden_parallel[i], ref, atol=ATOL, rtol=0)


def test_parallel_with_the_models_own_head(inputs):
    model = make_model("bert", kind="classification", num_labels=3)
    labels = torch.tensor([1, 0, 2])
    with torch.no_grad():
        with model.adapter_setup(Parallel("a", "b")):
            out = model(**inputs, labels=labels)
        refs = []
        for name in "ab":
            with model.adapter_setup(name):
                refs.append(model(**inputs, labels=labels))
    for i in range(2):
        torch.testing.assert_close(out.logits[i], refs[i].logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, refs[0].loss + refs[1].loss, atol=1e-5, rtol=0)


def test_parallel_trains_every_branch(inputs):
    model = make_model("bert", heads=True)
    model.train_adapter(Parallel("a", "b"))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = model(**inputs, labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".adapters.a." in n for n in grads) and any(".adapters.b." in n for n in grads)
    assert any(".heads.a." in n for n in grads) and any(".heads.b." in n for n in grads)
    assert set(before) >= grads


def _decoder_with_two_adapters(arch: str, *, flexible_heads: bool) -> torch.nn.Module:
    model = adapterhub.init(build(arch, "causal_lm"))
    for index, name in enumerate("ab"):
        model.add_adapter(name, config="pfeiffer")
        perturb(model._adapterhub.adapters[name], std=0.5, seed=index)
        if flexible_heads:
            model.add_causal_lm_head(name)
            perturb(model._adapterhub.heads[name], std=0.5, seed=10 + index)
    return model


@pytest.mark.parametrize("flexible_heads", [False, True], ids=["built-in LM head", "a head per branch"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_parallel_generate_equals_generating_with_each_adapter(arch, flexible_heads):
    model = _decoder_with_two_adapters(arch, flexible_heads=flexible_heads)
    prompt = torch.randint(5, 60, (2, 5))
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with model.adapter_setup(Parallel("a", "b")):
        together = model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
    assert together.shape == (4, 11)
    alone = []
    for name in "ab":
        with model.adapter_setup(name):
            if flexible_heads:
                model.active_head = name
            alone.append(model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings))
    assert torch.equal(together[:2], alone[0]) and torch.equal(together[2:], alone[1])
    assert not torch.equal(alone[0][:, 5:], alone[1][:, 5:])  # the branches really differ


def test_parallel_generate_needs_a_head_for_every_branch():
    model = adapterhub.init(build("gpt2", "base"))
    for name in "ab":
        model.add_adapter(name, config="pfeiffer")
    model.add_causal_lm_head("a")
    with model.adapter_setup(Parallel("a", "b")), pytest.raises(ConfigError, match=r"\['b'\] has no head"):
        model.generate(torch.randint(5, 60, (1, 4)), max_new_tokens=2, do_sample=False, pad_token_id=0)


# ------------------------------------------------------------------------------------------------ Split


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_split_equals_manual_per_site_reference(arch, inputs):
    model = make_model(arch, config="houlsby")
    k = 3

    def manual(layer, site, site_inputs, single):
        a, b = single("a"), single("b")
        return torch.cat([a[:, :k], b[:, k:]], dim=1)

    ours = hidden(model, inputs, Split("a", "b", split_index=k))
    with site_reference(model, manual):
        ref = hidden(model, inputs, "a")  # any active setup: the hooks call our reference
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    assert not torch.allclose(ours, hidden(model, inputs, "a"), atol=1e-3)


def test_split_with_three_parts_and_an_absent_adapter(inputs):
    model = make_model("bert", names=("a", "b"))
    model.add_adapter("c", config="pfeiffer[leave_out=[1]]")
    perturb(model._adapterhub.adapters["c"], std=0.2, seed=3)

    def manual(layer, site, site_inputs, single):
        parts = [single(n) for n in "abc"]
        parts = [base_value(site_inputs) if p is None else p for p in parts]
        return torch.cat([parts[0][:, :2], parts[1][:, 2:4], parts[2][:, 4:]], dim=1)

    ours = hidden(model, inputs, Split("a", "b", "c", split_index=[2, 4]))
    with site_reference(model, manual):
        ref = hidden(model, inputs, "a")
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    # a split index past the end gives every position to the first child
    torch.testing.assert_close(
        hidden(model, inputs, Split("a", "b", split_index=50)), hidden(model, inputs, "a"), atol=ATOL, rtol=0
    )


# ------------------------------------------------------------------------------------------------ Average


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_average_equals_weighted_mean_of_single_adapter_site_outputs(arch, inputs):
    model = make_model(arch)
    weights = [0.5, 0.3, 0.2]

    def manual(layer, site, site_inputs, single):
        outs = [single(n) for n in "abc"]
        if all(o is None for o in outs):
            return None
        return sum(w * o for w, o in zip(weights, outs, strict=True))

    ours = hidden(model, inputs, Average("a", "b", "c", weights=[5, 3, 2]))  # normalised to 0.5, 0.3, 0.2
    with site_reference(model, manual):
        ref = hidden(model, inputs, "a")
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        hidden(model, inputs, Average("a", "a")), hidden(model, inputs, "a"), atol=ATOL, rtol=0
    )
    unnormalised = hidden(model, inputs, Average("a", "b", weights=[1.0, 1.0], normalize_weights=False))
    assert not torch.allclose(unnormalised, hidden(model, inputs, Average("a", "b")), atol=1e-3)


# ------------------------------------------------------------------------------------------------ Fuse


def slow_fusion_reference(model, fuse):
    """The paper's formula per adapter: e_n = q·(K u_n + b_K), o = Σ softmax(e)_n V u_n, leave(o + residual)."""
    store = model._adapterhub
    fusion = store.fusions[fuse.fusion_name]
    names = list(fuse.children)

    def compute(layer, site, site_inputs, single):
        if site not in store.adapters[names[0]].sites_at(layer):
            return None
        last = store.adapters[names[-1]]
        state = enter_site(last.config, site_inputs)
        f = fusion.layer_at(layer, site)
        q = f.query(state.x)
        scores, values = [], []
        for name in names:
            u = store.adapters[name].layer_at(layer, site).delta(state.x)
            scores.append((q * f.key(u)).sum(-1))
            values.append(f.value(u) if f.value is not None else u)
        probs = torch.softmax(torch.stack(scores, -1), -1)
        out = sum(probs[..., n : n + 1] * values[n] for n in range(len(names)))
        return leave_site(last.config, out + state.adapter_residual, site_inputs, last.dims.pre_norm)

    return compute


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("config", ["dynamic", "static"])
def test_fuse_equals_the_per_adapter_formula(arch, config, inputs):
    model = make_model(arch, config="houlsby")
    fuse = Fuse("a", "b", "c")
    model.add_adapter_fusion(fuse, config=config)
    perturb(model._adapterhub.fusions["a,b,c"], std=0.3, seed=7)
    ours = hidden(model, inputs, fuse)
    with site_reference(model, slow_fusion_reference(model, fuse)):
        ref = hidden(model, inputs, "a")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_fuse_with_different_bottleneck_sizes_uses_the_loop_path(inputs):
    model = adapterhub.init(build("bert"))
    for i, (name, rf) in enumerate([("a", 2), ("b", 8)]):
        model.add_adapter(name, config=f"pfeiffer[reduction_factor={rf}]")
        perturb(model._adapterhub.adapters[name], std=0.2, seed=i)
    fuse = Fuse("a", "b")
    model.add_adapter_fusion(fuse)
    perturb(model._adapterhub.fusions["a,b"], std=0.3, seed=1)
    ours = hidden(model, inputs, fuse)
    with site_reference(model, slow_fusion_reference(model, fuse)):
        ref = hidden(model, inputs, "a")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_stack_under_fuse_and_fuse_in_stack(inputs):
    model = make_model("bert", names=("lang", "a", "b"))
    model.add_adapter("off", config="pfeiffer[leave_out=[0,1]]")  # sits nowhere
    model.add_adapter_fusion(Fuse("a", "b"))
    perturb(model._adapterhub.fusions["a,b"], std=0.3, seed=2)
    fused = hidden(model, inputs, Fuse("a", "b"))
    torch.testing.assert_close(hidden(model, inputs, Stack("off", Fuse("a", "b"))), fused, atol=ATOL, rtol=0)
    stacked = hidden(model, inputs, Stack("lang", Fuse("a", "b")))
    assert not torch.allclose(stacked, fused, atol=1e-3)
    after = hidden(model, inputs, Stack(Fuse("a", "b"), "lang"))
    assert not torch.allclose(after, stacked, atol=1e-3)


def test_fuse_without_fusion_weights_says_what_to_do(inputs):
    model = make_model("bert")
    with pytest.raises(adapterhub.AdapterNotFoundError, match="add_adapter_fusion"):
        hidden(model, inputs, Fuse("a", "b"))


def test_fuse_needs_adapters_at_the_same_sites():
    model = make_model("bert", names=("a",))
    model.add_adapter("h", config="houlsby")
    with pytest.raises(ConfigError, match="placed differently"):
        model.add_adapter_fusion(Fuse("a", "h"))


def test_make_inputs_is_deterministic():
    assert torch.equal(make_inputs()["input_ids"], make_inputs()["input_ids"])
