"""AdaLoRA on tiny BERT and Llama against peft's ``AdaLoraModel``: equal outputs with the same weights (by module name
and by spec point), a new adapter is the identity, which parameters train, merging as peft's, the orthogonal
regulariser equal to the one peft adds to the loss, and the rank allocator step by step (same weights and gradients
-> same ``E`` values, masks and ``rank_pattern``); what is refused."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Fuse
from adapterhub.errors import ConfigError
from adapterhub.spec.configs import AdaLoraConfig, resolve_config
from method_checks import check_training_step, make_inputs
from tiny_models import build

peft = pytest.importorskip("peft", reason="peft is not installed")

TARGETS = {"bert": ["query", "value", "dense"], "llama": ["q_proj", "v_proj", "down_proj"]}


def _pair(arch: str, kind: str = "base", seed: int = 3, **options):
    """peft's AdaLoRA model and ours with the same (random, non-identity) weights. A classification model is
    wrapped with peft's ``SEQ_CLS`` task type (whose forward goes through ``AdaLoraModel.forward``, which adds the
    orthogonal regulariser to the loss)."""
    options = {"init_r": 4, "target_r": 2, "lora_alpha": 6, "total_step": 10, **options}
    task = {"task_type": "SEQ_CLS"} if kind == "classification" else {}
    theirs = peft.get_peft_model(
        build(arch, kind), peft.AdaLoraConfig(target_modules=TARGETS[arch], **options, **task)
    ).eval()
    ours = adapterhub.init(build(arch, kind))
    mine = {k: v for k, v in options.items() if k != "lora_alpha"} | {"alpha": options["lora_alpha"]}
    ours.add_adapter(
        "a", config={"method": "adalora", "target_modules": TARGETS[arch], **mine}, set_active=True
    )
    ours.eval()
    adapter = ours._adapterhub.adapters["a"]
    generator = torch.Generator().manual_seed(seed)
    root = theirs.base_model.model
    with torch.no_grad():
        for path, site in adapter.sites().items():
            module = root.get_submodule(path)
            for name in ("lora_A", "lora_B", "lora_E"):
                value = torch.randn(getattr(site, name).shape, generator=generator) * 0.3
                getattr(site, name).copy_(value)
                getattr(module, name)["default"].copy_(value)
    return theirs, ours, adapter


def _hidden(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_outputs_equal_peft_with_the_same_weights(arch):
    theirs, ours, adapter = _pair(arch)
    inputs = make_inputs()
    peft_sites = {n for n, m in theirs.base_model.model.named_modules() if hasattr(m, "lora_E")}
    assert set(adapter.sites()) == peft_sites and len(peft_sites) >= 6
    torch.testing.assert_close(_hidden(ours, inputs), _hidden(theirs, inputs), atol=1e-6, rtol=0)
    assert not torch.allclose(_hidden(ours, inputs), build(arch)(**inputs).last_hidden_state, atol=1e-3)


def test_spec_points_equal_peft_on_the_same_modules():
    theirs = peft.get_peft_model(
        build("llama"), peft.AdaLoraConfig(init_r=3, target_modules=["q_proj", "down_proj"], total_step=5)
    ).eval()
    ours = adapterhub.init(build("llama"))
    ours.add_adapter("a", config="adalora[init_r=3,targets=[q,ffn_out]]", set_active=True)
    ours.eval()
    sites = ours._adapterhub.adapters["a"].sites()
    assert sorted(sites) == ["layers.0.ffn_out", "layers.0.q", "layers.1.ffn_out", "layers.1.q"]
    names = {"q": "self_attn.q_proj", "ffn_out": "mlp.down_proj"}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, site in sites.items():
            _, layer, point = key.split(".")
            module = theirs.base_model.model.get_submodule(f"layers.{layer}.{names[point]}")
            for name in ("lora_A", "lora_B", "lora_E"):
                value = torch.randn(getattr(site, name).shape, generator=generator)
                getattr(site, name).copy_(value)
                getattr(module, name)["default"].copy_(value)
    inputs = make_inputs()
    torch.testing.assert_close(_hidden(ours, inputs), _hidden(theirs, inputs), atol=1e-5, rtol=0)


def test_new_adapter_is_identity_initialised_as_peft():
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="adalora", set_active=True)
    inputs = make_inputs()
    assert torch.equal(_hidden(model, inputs), build("bert")(**inputs).last_hidden_state)
    site = next(iter(model._adapterhub.adapters["a"].sites().values()))
    assert site.lora_A.shape == (12, 32) and site.lora_B.shape == (32, 12) and site.lora_E.shape == (12, 1)
    assert torch.all(site.lora_E == 0)
    assert 0.01 < float(site.lora_A.detach().std()) < 0.03 and 0.01 < float(site.lora_B.detach().std()) < 0.03


def test_training_changes_only_a_b_e_of_the_adapter():
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="adalora[init_r=4,target_r=2]")
    with torch.no_grad():
        for site in model._adapterhub.adapters["a"].sites().values():
            site.lora_E.fill_(0.5)
    changed = check_training_step(model, make_inputs())
    params = {n.split(".")[-1] for n in changed if ".adapters." in n}
    assert params == {"lora_A", "lora_B", "lora_E"}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_merge_equals_peft_merge_and_unmerge_restores(arch):
    theirs, ours, _ = _pair(arch)
    inputs = make_inputs()
    before = _hidden(ours, inputs)
    merged = theirs.merge_and_unload()
    ours.merge_adapter("a")
    torch.testing.assert_close(_hidden(ours, inputs), _hidden(merged, inputs), atol=1e-5, rtol=0)
    torch.testing.assert_close(_hidden(ours, inputs), before, atol=1e-5, rtol=0)
    ours.unmerge_adapter("a")
    torch.testing.assert_close(_hidden(ours, inputs), before, atol=1e-5, rtol=0)


def test_orthogonal_regulariser_equals_the_term_peft_adds_to_the_loss():
    theirs, ours, adapter = _pair("bert", "classification", orth_reg_weight=0.7)
    inputs = make_inputs() | {"labels": torch.tensor([0, 1, 1])}
    task = ours(**inputs).loss
    with torch.no_grad():
        total = theirs(**inputs).loss
    term = adapter.training_loss()
    assert term is not None and term.requires_grad
    torch.testing.assert_close(task.detach() + term.detach(), total, atol=1e-5, rtol=0)
    off = adapterhub.init(build("bert"))
    off.add_adapter("z", config="adalora[orth_reg_weight=0]")
    assert off._adapterhub.adapters["z"].training_loss() is None


def _peft_pattern(theirs) -> dict[str, tuple[bool, ...]]:
    pattern = theirs.peft_config["default"].rank_pattern or {}
    return {k.replace(".lora_E.default", ""): tuple(v) for k, v in pattern.items()}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_rank_allocator_matches_peft_step_by_step(arch):
    schedule = {"tinit": 1, "tfinal": 3, "deltaT": 2, "total_step": 10, "orth_reg_weight": 0.3}
    theirs, ours, adapter = _pair(arch, "classification", init_r=4, target_r=2, **schedule)
    mine = [p for p in adapter.parameters() if p.requires_grad]
    peft_params = [p for n, p in theirs.named_parameters() if "lora_" in n]
    assert len(mine) == len(peft_params) == 3 * len(adapter.sites())
    rows = make_inputs() | {"labels": torch.tensor([0, 1, 1])}
    patterns = []
    for step in range(1, 13):
        # same weights -> same loss (task + orthogonal term) and gradients; one SGD step on both, then allocate
        loss_theirs = theirs(**rows).loss
        loss_ours = ours(**rows).loss + adapter.training_loss()
        torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-5, rtol=0)
        loss_theirs.backward()
        loss_ours.backward()
        with torch.no_grad():
            for p in [*mine, *peft_params]:
                p.sub_(0.5 * p.grad)
        theirs.base_model.update_and_allocate(step)
        adapter.after_optimizer_step(step, 10)
        for p in [*mine, *peft_params]:
            p.grad = None
        root = theirs.base_model.model
        for path, site in adapter.sites().items():
            torch.testing.assert_close(
                site.lora_E, root.get_submodule(path).lora_E["default"], atol=1e-5, rtol=0
            )
            for name in ("lora_A", "lora_B"):
                torch.testing.assert_close(
                    getattr(site, name), getattr(root.get_submodule(path), name)["default"], atol=1e-5, rtol=0
                )
        ours_pattern = dict(adapter.config.rank_pattern or ())
        assert ours_pattern == _peft_pattern(theirs), step
        patterns.append(ours_pattern)
    final = patterns[-1]
    targets = len(final)
    kept = [sum(sum(mask) for mask in pattern.values()) for pattern in patterns]
    # budget (cubic from init 4·n to target 2·n between tinit=1 and T-tfinal=7, masking every deltaT=2 steps)
    assert kept[1] == int(2 * targets * (5 / 6) ** 3 + 2 * targets) and kept[3] < kept[1]
    assert kept[-1] == 2 * targets
    assert patterns[0] == {}  # warm-up (step <= tinit): no masking yet
    assert patterns[6] == final and patterns[11] == final  # fixed from T - tfinal = 7 on
    kept_zero = [
        site.lora_E[~torch.tensor(final[path])]
        for path, site in adapter.sites().items()
        if not all(final[path])
    ]
    assert kept_zero and all(torch.all(v == 0) for v in kept_zero)


def test_total_step_from_the_run_and_schedule_checks():
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="adalora[init_r=3,target_r=1,tfinal=4]", set_active=True)
    adapter = model._adapterhub.adapters["a"]
    with pytest.raises(ConfigError, match="no budgeting phase"):
        adapter.after_optimizer_step(1, 4)  # 4 steps, tfinal=4: nothing left to budget
    with pytest.raises(RuntimeError, match="needs the gradient"):
        adapter.after_optimizer_step(1, 10)
    for text, message in [
        ("adalora[beta2=0]", "beta2"),
        ("adalora[total_step=3,tinit=3]", "no budgeting phase"),
        ("adalora[rank_pattern={a:[true]}]", "rank_pattern"),
        ("adalora[r=4]", "init_r"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_config(text)
    model.add_adapter("big", config="adalora[init_r=2,target_r=8]")  # as peft's files may say: fine to run
    with pytest.raises(ConfigError, match="above init_r"):
        model._adapterhub.adapters["big"].after_optimizer_step(1, 10)  # not to train
    config = AdaLoraConfig(init_r=2, rank_pattern={"layers.0.q": [True, False]}, targets=["q"])
    assert AdaLoraConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="name each target once"):
        model.add_adapter("b", config=config)


def test_refused_where_it_does_not_apply():
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="adalora[init_r=2]")
    model.add_adapter("b", config="adalora[init_r=2]")
    with pytest.raises(ConfigError, match="Fuse"):
        model.set_active_adapters(Fuse("a", "b"))
    with pytest.raises(ConfigError, match="no weighted combination"):
        model.average_adapter("avg", ["a", "b"])
    with pytest.raises(ConfigError, match=r"nn\.Embedding|embeddings"):
        model.add_adapter("c", config={"method": "adalora", "target_modules": ["word_embeddings"]})


def test_composition_blocks_and_stack_equals_both_merged():
    from adapterhub import Stack
    from method_checks import ACTIVE, check_row_blocks, hidden, make

    model = make("llama", "adalora[init_r=3,targets=[q,v,ffn_out]]")
    inputs = make_inputs()
    check_row_blocks(model, inputs)  # BatchSplit (row blocks one by one), Parallel, Average, Split
    stacked = hidden(model, inputs, Stack("a", "b"))
    assert not torch.allclose(stacked, hidden(model, inputs, "a"), atol=1e-4)
    model.set_active_adapters(Stack("a", "b"))
    model.merge_adapter("a")
    model.merge_adapter("b")
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), stacked, atol=1e-5, rtol=0)


def test_in_a_union_the_parts_answer_the_training_protocol(tmp_path):
    from adapterhub.methods import MethodUnion

    model = adapterhub.init(build("bert"))
    union = MethodUnion("adalora[init_r=3,target_r=1,total_step=4]", "pfeiffer")
    model.add_adapter("u", config=union)
    model.train_adapter("u")
    adapter = model._adapterhub.adapters["u"]
    ada = adapter.parts[0]
    with torch.no_grad():
        for site in ada.sites().values():
            site.lora_E.fill_(0.5)
    inputs = make_inputs()
    for step in range(1, 5):
        loss = (model(**inputs).last_hidden_state ** 2).mean()
        term = adapter.training_loss()
        torch.testing.assert_close(term, ada.training_loss())
        (loss + term).backward()
        adapter.after_optimizer_step(step, 4)
        model.zero_grad()
    pattern = dict(adapter.config.configs[0].rank_pattern)
    assert sum(sum(m) for m in pattern.values()) == len(pattern)  # target_r=1 per target
    model.save_adapter(tmp_path / "u", "u")
    fresh = adapterhub.init(build("bert"))
    fresh.load_adapter(tmp_path / "u")
    assert dict(fresh._adapterhub.adapters["u"].config.configs[0].rank_pattern) == pattern
