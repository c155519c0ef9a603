"""Behaviour of injected adapters on every supported architecture."""

import copy

import pytest
import torch

import adapterhub
from adapterhub import UnsupportedArchitectureError
from tiny_models import ARCHITECTURES, DECODERS, build, perturb

PRESETS = ["pfeiffer", "houlsby", "bapna_firat"]


def hidden(model, inputs):
    return model(**inputs)[0]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_no_active_adapter_is_bit_identical(arch, inputs):
    model = build(arch)
    before = hidden(model, inputs)
    adapterhub.init(model)
    assert torch.equal(hidden(model, inputs), before)
    model.add_adapter("a", config="houlsby")
    perturb(model._adapterhub.adapters["a"])
    assert torch.equal(hidden(model, inputs), before)  # added but not active
    model.set_active_adapters("a")
    assert not torch.allclose(hidden(model, inputs), before, atol=1e-3)
    model.set_active_adapters(None)
    assert torch.equal(hidden(model, inputs), before)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_and_changes_outputs(arch, preset, inputs):
    model = adapterhub.init(build(arch))
    before = hidden(model, inputs)
    model.add_adapter("a", config=preset, set_active=True)
    near = hidden(model, inputs)
    assert near.shape == before.shape and torch.isfinite(near).all()
    perturb(model._adapterhub.adapters["a"])
    assert not torch.allclose(hidden(model, inputs), before, atol=1e-3)


def test_near_identity_init_stays_close_to_the_base(inputs):
    model = adapterhub.init(build("bert"))
    before = hidden(model, inputs)
    for init in ("bert", "houlsby", "mam_adapter"):
        model.add_adapter(init, config=f"houlsby[init_weights={init}]")
        with model.adapter_setup(init):
            after = hidden(model, inputs)
        tolerance = 0 if init == "mam_adapter" else 1e-2
        assert (after - before).abs().max() <= tolerance + 1e-6


def test_init_is_idempotent_and_keeps_the_class_name():
    model = build("bert", "classification")
    cls_name = type(model).__name__
    assert adapterhub.init(model) is model
    store = model._adapterhub
    assert adapterhub.init(model) is model and model._adapterhub is store
    assert type(model).__name__ == cls_name and isinstance(
        model, type(build("bert", "classification")).__mro__[0]
    )


def test_unsupported_architecture_says_how_to_add_a_spec():
    import transformers

    model = transformers.AutoModel.from_config(  # a family without a spec (T5 has one since 2026-11)
        transformers.SqueezeBertConfig(
            vocab_size=99, hidden_size=32, embedding_size=32, num_hidden_layers=1, num_attention_heads=4
        )
    )
    adapterhub.init(model)  # carries adapters by module name only
    with pytest.raises(UnsupportedArchitectureError, match="register_architecture"):
        model.add_adapter("a", "pfeiffer")


def test_several_adapters_and_left_out_layers(inputs):
    model = adapterhub.init(build("bert"))
    before = hidden(model, inputs)
    model.add_adapter("all", config="pfeiffer")
    model.add_adapter("none", config="pfeiffer[leave_out=[0,1]]")
    perturb(model._adapterhub.adapters["all"])
    model.set_active_adapters("none")
    assert torch.equal(hidden(model, inputs), before)  # every layer left out
    model.set_active_adapters("all")
    assert not torch.allclose(hidden(model, inputs), before)
    assert set(model.adapters) == {"all", "none"}
    model.delete_adapter("all")
    assert model.active_adapters is None and set(model.adapters) == {"none"}
    assert torch.equal(hidden(model, inputs), before)


def test_per_call_setup_is_scoped_to_the_with_block(inputs):
    model = adapterhub.init(build("bert"))
    model.add_adapter("a")
    perturb(model._adapterhub.adapters["a"])
    before = hidden(model, inputs)
    with model.adapter_setup("a"):
        assert model.active_adapters == "a"
        inside = hidden(model, inputs)
    assert model.active_adapters is None
    assert torch.equal(hidden(model, inputs), before)
    model.set_active_adapters("a")
    assert torch.equal(hidden(model, inputs), inside)


@pytest.mark.parametrize("arch", DECODERS)
def test_generate_works_with_an_active_adapter(arch):
    model = adapterhub.init(build(arch, "causal_lm"))
    model.add_adapter("a", config="houlsby", set_active=True)
    perturb(model._adapterhub.adapters["a"])
    prompt = torch.tensor([[5, 6, 7]])
    out = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 8)
    # cached generation equals greedy decoding without the cache
    seq = prompt
    for _ in range(5):
        logits = model(seq, use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_no_grad_and_dtype_conversion(inputs):
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="houlsby", set_active=True)
    perturb(model._adapterhub.adapters["a"])
    with torch.no_grad():
        ref = hidden(model, inputs)
        assert not ref.requires_grad
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half._adapterhub.parameters())
    with torch.no_grad():
        out = hidden(half, inputs)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=0.1)
    half.add_adapter("b", config="pfeiffer")  # new adapters follow the model's dtype
    assert all(p.dtype == torch.bfloat16 for p in half._adapterhub.adapters["b"].parameters())


def test_base_save_pretrained_excludes_adapters(tmp_path, inputs):
    import transformers

    model = adapterhub.init(build("bert", "classification"))
    model.add_adapter("a", set_active=True)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == "BertForSequenceClassification"
    model.set_active_adapters(None)
    assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)
    assert not any(k.startswith("_adapterhub") for k in reloaded.state_dict())


def test_torch_compile_matches_eager(inputs):
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="houlsby", set_active=True)
    perturb(model._adapterhub.adapters["a"])
    ref = hidden(model, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert torch.allclose(hidden(compiled, inputs), ref, atol=1e-6)


def test_threads_use_their_own_setups(inputs):
    import threading

    model = adapterhub.init(build("bert"))
    for name in ("a", "b"):
        model.add_adapter(name)
        perturb(model._adapterhub.adapters[name], seed=hash(name) % 100)
    expected = {}
    for name in ("a", "b"):
        with model.adapter_setup(name):
            expected[name] = hidden(model, inputs)
    results, errors = {}, []

    def work(name):
        try:
            for _ in range(5):
                with model.adapter_setup(name):
                    out = hidden(model, inputs)
                results.setdefault(name, []).append(torch.equal(out, expected[name]))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(all(v) for v in results.values())


def test_deepcopy_gets_its_own_adapters(inputs):
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="houlsby", set_active=True)
    perturb(model._adapterhub.adapters["a"])
    ref = hidden(model, inputs)
    clone = copy.deepcopy(model)
    assert torch.equal(hidden(clone, inputs), ref)
    perturb(clone._adapterhub.adapters["a"], seed=7)
    assert not torch.allclose(hidden(clone, inputs), ref)
    assert torch.equal(hidden(model, inputs), ref)  # the original is untouched


def test_new_adapters_and_heads_follow_the_models_train_or_eval_mode():
    model = adapterhub.init(build("bert"))  # eval mode
    model.add_adapter("a", config="pfeiffer[dropout=0.5]")
    head = model.add_classification_head("a", num_labels=2)
    assert not model._adapterhub.adapters["a"].training and not head.training
    model.train()
    model.add_adapter("b")
    assert model._adapterhub.adapters["b"].training


def test_base_save_pretrained_warns_when_trainable_adapters_are_left_out(tmp_path):
    model = adapterhub.init(build("bert"))
    model.add_adapter("a")
    model.train_adapter("a")
    with pytest.warns(UserWarning, match="save_adapter"):
        model.save_pretrained(tmp_path)
