"""ReFT (LoReFT, NoReFT, DiReFT) on tiny BERT and Llama: the presets and config checks, the intervention's math
on the layer output, which positions change (right and left padding, without a mask), which parameters train,
save / load, composition (Stack with adapters elsewhere; BatchSplit per row, equal to separate passes; the refused
blocks with their reasons) and generation with a key/value cache (prefix-only: the same tokens as without a cache;
suffix positions: the prompt's last ones, intervened on at prefill only)."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapterhub.errors import ConfigError
from adapterhub.methods.point_inputs import CallPositions
from adapterhub.runtime import callstate
from adapterhub.spec.configs import ReftConfig, resolve_config
from method_checks import check_training_step
from tiny_models import build


def noisy(module: torch.nn.Module, seed: int = 3, std: float = 0.3) -> None:
    """Move a ReFT adapter far from its start; an orthogonal projection gets seeded orthonormal rows through its
    parametrization (noise on its ``original`` would break it: the diagonal there carries signs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not name.endswith("original"):
                param.add_(torch.randn(param.shape, generator=generator) * std)
        for sub in module.modules():
            if hasattr(sub, "parametrizations"):
                rows, width = sub.weight.shape
                q, _ = torch.linalg.qr(torch.randn(width, rows, generator=generator))  # (d, r)
                sub.weight = q.T.contiguous()


def reft_model(arch: str, config, kind: str = "base", name: str = "a"):
    model = adapterhub.init(build(arch, kind))
    model.add_adapter(name, config=config)
    noisy(model._adapterhub.adapters[name])
    return model


def run(model, setup, **inputs) -> torch.Tensor:
    with torch.no_grad(), model.adapter_setup(setup):
        return model(**inputs).last_hidden_state


def changed_positions(model, ids, mask=None) -> list[list[int]]:
    inputs = {"input_ids": ids} if mask is None else {"input_ids": ids, "attention_mask": mask}
    delta = (run(model, "a", **inputs) - run(model, None, **inputs)).abs().amax(-1)  # (rows, seq)
    return [row.nonzero().flatten().tolist() for row in delta > 1e-6]


IDS = torch.randint(3, 90, (3, 7), generator=torch.Generator().manual_seed(0))


def test_presets_are_the_adapters_library_defaults():
    assert resolve_config("loreft") == ReftConfig(
        layers="all",
        prefix_positions=3,
        suffix_positions=0,
        r=1,
        orthogonality=True,
        subtract_projection=True,
    )
    assert resolve_config("noreft") == ReftConfig(orthogonality=False)
    assert resolve_config("direft") == ReftConfig(orthogonality=False, subtract_projection=False)
    assert resolve_config("loreft").dropout == 0.05 and resolve_config("loreft").non_linearity is None
    config = resolve_config("loreft[layers=[1,0],r=4,non_linearity=Tanh]")
    assert config.layers == (0, 1) and config.r == 4 and config.non_linearity == "tanh"
    assert ReftConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"rank": 2}, "Valid keys"),
        ({"prefix_positions": 0, "suffix_positions": 0}, "no position"),
        ({"r": 0}, "r must be"),
        ({"layers": "some"}, "layers must be"),
        ({"layers": []}, "intervenes nowhere"),
        ({"non_linearity": "relux"}, "relu"),
        ({"dropout": 1.5}, "dropout"),
        ({"orthogonality": "yes"}, "true or false"),
    ],
)
def test_bad_configs_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config({"method": "reft", **bad})


def test_layers_out_of_range_are_refused():
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=r"0\.\.1"):
        model.add_adapter("a", "loreft[layers=[2]]")


def test_encoder_decoder_models_are_refused():
    model = adapterhub.init(build("t5", "seq2seq_lm"))
    with pytest.raises(ConfigError, match="encoder-decoder"):
        model.add_adapter("a", "loreft")


def test_half_precision_keeps_the_orthogonal_projection_in_float32():
    model = adapterhub.init(build("llama").to(torch.bfloat16))
    model.add_adapter("a", "loreft[prefix_positions=2,suffix_positions=1]", set_active=True)
    dtypes = {n: p.dtype for n, p in model._adapterhub.adapters["a"].named_parameters()}
    assert {d for n, d in dtypes.items() if "projection" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "learned_source" in n} == {torch.bfloat16}
    model.train_adapter("a")
    model(input_ids=IDS).last_hidden_state.float().sum().backward()
    assert all(p.grad is not None for p in model._adapterhub.adapters["a"].parameters())


def test_the_intervention_on_the_last_layer_is_the_formula():
    """BERT, intervention on the last layer only: last_hidden_state is that layer's output, so at the chosen
    positions it is ``z + Rᵀ(f(W z + b) - R z)`` of the base output ``z``, and equal to ``z`` elsewhere."""
    model = reft_model(
        "bert", "loreft[layers=[1],prefix_positions=2,suffix_positions=1,r=3,non_linearity=tanh]"
    )
    mask = torch.ones_like(IDS)
    mask[2, 5:] = 0
    z = run(model, None, input_ids=IDS, attention_mask=mask)
    out = run(model, "a", input_ids=IDS, attention_mask=mask)
    units = model._adapterhub.adapters["a"].layers["1"].units
    for row, positions in enumerate([(0, 1, 6), (0, 1, 6), (0, 1, 4)]):
        for k, position in enumerate(positions):
            unit = units[0 if k < 2 else 1]
            x = z[row, position]  # (d,)
            r_matrix = unit.projection.weight.detach()  # (r, d)
            torch.testing.assert_close(r_matrix @ r_matrix.T, torch.eye(3), atol=1e-5, rtol=0)  # orthonormal
            source = torch.tanh(unit.learned_source(x)) - r_matrix @ x
            torch.testing.assert_close(out[row, position], x + r_matrix.T @ source, atol=1e-5, rtol=0)
        others = [p for p in range(7) if p not in positions]
        assert torch.equal(out[row, others], z[row, others])


def test_direft_and_tied_weights():
    model = reft_model(
        "bert", "direft[layers=[1],prefix_positions=1,suffix_positions=1,r=2,tied_weights=true]"
    )
    adapter = model._adapterhub.adapters["a"]
    assert len(adapter.layers["1"].units) == 1 and list(adapter.layers) == ["1"]
    z = run(model, None, input_ids=IDS)
    out = run(model, "a", input_ids=IDS)
    unit = adapter.layers["1"].units[0]
    r_matrix = unit.projection.weight.detach()
    for position in (0, 6):  # prefix and suffix: the same unit, without the subtraction
        x = z[:, position]
        torch.testing.assert_close(out[:, position], x + unit.learned_source(x) @ r_matrix, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_positions_follow_each_calls_padding(arch):
    model = reft_model(arch, "noreft[layers=[1],prefix_positions=2,suffix_positions=1]")
    right = torch.ones_like(IDS)
    right[2, 4:] = 0  # row 2: 4 tokens, then padding
    left = torch.ones_like(IDS)
    left[2, :3] = 0  # row 2: padding, then 4 tokens
    assert changed_positions(model, IDS, right) == [[0, 1, 6], [0, 1, 6], [0, 1, 3]]
    assert changed_positions(model, IDS, left) == [[0, 1, 6], [0, 1, 6], [3, 4, 6]]
    assert changed_positions(model, IDS) == [[0, 1, 6]] * 3  # no mask: the whole row


def test_prefix_and_suffix_of_a_short_row_and_rows_outside_their_sequence():
    model = reft_model("bert", "noreft[layers=[1],prefix_positions=3,suffix_positions=2]")
    right = torch.ones_like(IDS)
    right[2, 2:] = 0  # a right-padded row of 2 tokens: the prefix reaches into its padding (as that library)
    assert changed_positions(model, IDS, right)[2] == [0, 1, 2]
    left = torch.ones_like(IDS)
    left[2, :5] = 0  # a left-padded row of 2 tokens: its prefix would run past the sequence
    with pytest.raises(ConfigError, match="row 2"):
        changed_positions(model, IDS, left)


def test_a_mask_with_gaps_is_refused():
    model = reft_model("bert", "noreft[layers=[1]]")
    gaps = torch.ones_like(IDS)
    gaps[1, 3] = 0
    with pytest.raises(ConfigError, match="row 1 of the attention mask has gaps"):
        changed_positions(model, IDS, gaps)


def test_cached_steps_count_tokens_not_slots():
    """A cached step whose mask has gaps (the generation engine's step batches: cached and new tokens each
    right-aligned) intervenes on the row's first tokens, as the whole sequence without gaps would."""
    model = reft_model("llama", "noreft[prefix_positions=3,r=2]", kind="causal_lm")
    model.set_active_adapters("a")
    ids = IDS[:1, :4]
    with torch.no_grad():
        whole = model(input_ids=ids).logits[:, -2:]  # tokens 2 and 3: token 2 is in the prefix
        cache = model(input_ids=ids[:, :2], use_cache=True).past_key_values
        gapped = torch.tensor([[1, 1, 0, 1, 1]])  # 2 cached tokens, a gap, then tokens 2 and 3
        step = model(
            input_ids=torch.cat([ids[:, :1], ids[:, 2:]], dim=1)[
                :, -3:
            ],  # (1, 3): a pad slot, then tokens 2, 3
            attention_mask=gapped,
            position_ids=torch.tensor([[0, 2, 3]]),
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -2:]
    torch.testing.assert_close(step, whole, atol=1e-5, rtol=0)


def test_a_sub_module_called_alone_is_refused():
    model = reft_model("bert", "loreft", kind="classification")
    model.set_active_adapters("a")
    with pytest.raises(ConfigError, match="whole model"), torch.no_grad():
        model.bert(input_ids=IDS)


def test_only_the_interventions_train():
    model = reft_model("bert", "loreft[prefix_positions=2,suffix_positions=1]", kind="classification")
    changed = check_training_step(model, {"input_ids": IDS})
    assert any("learned_source" in n for n in changed) and any("original" in n for n in changed)
    adapter = model._adapterhub.adapters["a"]
    assert sum(p.numel() for p in adapter.parameters()) == 2 * 2 * (
        2 * 1 * 32 + 1
    )  # layers x units x (2rd + r)


def test_round_trip(tmp_path):
    model = reft_model("llama", "loreft[prefix_positions=1,suffix_positions=2,r=2,tied_weights=true]")
    want = run(model, "a", input_ids=IDS)
    model.save_adapter(tmp_path / "a", "a")
    fresh = adapterhub.init(build("llama"))
    name = fresh.load_adapter(tmp_path / "a")
    torch.testing.assert_close(run(fresh, name, input_ids=IDS), want, atol=0, rtol=0)


def test_stack_with_adapters_at_other_points():
    model = reft_model("bert", "loreft[layers=[1],prefix_positions=2]")
    model.add_adapter("lora", "lora[r=2]")
    noisy(model._adapterhub.adapters["lora"], seed=9)
    lora_only = run(model, "lora", input_ids=IDS)
    both = run(model, Stack("lora", "a"), input_ids=IDS)
    assert torch.equal(both[:, 2:], lora_only[:, 2:]) and not torch.allclose(both[:, :2], lora_only[:, :2])
    torch.testing.assert_close(run(model, Stack("a", "lora"), input_ids=IDS), both, atol=0, rtol=0)


def test_refused_compositions_say_why():
    model = reft_model("bert", "loreft[layers=[1]]")
    model.add_adapter("b", "loreft[layers=[1]]")
    model.add_adapter("bn", "pfeiffer")
    with pytest.raises(ConfigError, match="only adapter at those layer outputs"):
        model.set_active_adapters(Stack("bn", "a"))
    with pytest.raises(ConfigError, match="first adapter of the setup to every branch"):
        model.set_active_adapters(Parallel("a", "b"))
    model.set_active_adapters(Split("a", "b", split_index=3))  # runs only given positions per position
    with pytest.raises(ConfigError, match=r"Split's slice of positions.*GenerationEngine\(packed=True\)"):
        model(input_ids=IDS)
    with pytest.raises(ConfigError, match="no output to mix"):
        model.set_active_adapters(Fuse("a", "b"))
    with pytest.raises(ConfigError, match="no Average"):
        model.set_active_adapters(Average("a", "b"))


def _generate(model, ids, mask, use_cache):
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=5,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )


# prefix 2 with a left-padded row (as for generation); prefix 7, longer than the prompts of 5 tokens, so the first
# generated tokens are intervened on too (a row that short under left padding is refused: its prefix would run
# past the prompt)
@pytest.mark.parametrize("prefix, padding", [(2, 2), (7, 0)])
def test_cached_generation_matches_uncached(prefix, padding):
    model = reft_model("llama", f"loreft[prefix_positions={prefix},r=2]", kind="causal_lm")
    model.set_active_adapters("a")
    ids = IDS[:, :5]
    mask = torch.ones_like(ids)
    mask[2, :padding] = 0
    cached = _generate(model, ids, mask, True)
    assert torch.equal(cached, _generate(model, ids, mask, False))
    model.set_active_adapters(None)
    assert not torch.equal(cached, _generate(model, ids, mask, True))  # the adapter changes the tokens


def test_suffix_positions_under_a_cache_are_the_prompts_last_ones():
    """Cached generation intervenes on the prompt's last positions while the prompt is computed and never on a
    generated token: the same tokens as a step-by-step reference that recomputes the whole sequence each step with
    the suffix pinned to the prompt's end (per-row positions: ``rank`` / ``prompt``)."""
    model = reft_model("llama", "loreft[prefix_positions=1,suffix_positions=2,r=2]", kind="causal_lm")
    model.set_active_adapters("a")
    ids = IDS[:, :5]
    cached = _generate(model, ids, torch.ones_like(ids), True)
    sequence = ids
    for _ in range(
        5
    ):  # each step: the whole sequence, positions 0 and 3..4 (the prompt's suffix) intervened on
        rows, length = sequence.shape
        rank = torch.arange(length).expand(rows, length)
        positions = CallPositions(None, 0, rank, torch.full((rows,), 5))
        with torch.no_grad(), callstate.given_positions(model._store, positions):
            logits = model(input_ids=sequence).logits[:, -1]
        sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, sequence)
    moving = _generate(
        model, ids, torch.ones_like(ids), False
    )  # without a cache: the suffix moves (that library)
    assert moving.shape == (3, 10) and not torch.equal(moving, cached)


def test_a_cached_call_of_several_tokens_with_suffix_positions_is_refused():
    model = reft_model("llama", "loreft[prefix_positions=1,suffix_positions=1]", kind="causal_lm")
    model.set_active_adapters("a")
    ids = IDS[:1, :5]
    with torch.no_grad():
        cache = model(input_ids=ids[:, :2], use_cache=True).past_key_values
        with pytest.raises(ConfigError, match="Feed the whole prompt in one call"):
            model(
                input_ids=ids[:, 2:],
                attention_mask=torch.ones_like(ids),
                past_key_values=cache,
                use_cache=True,
            )


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_batch_split_runs_each_reft_adapter_on_its_own_rows(arch):
    """BatchSplit of two ReFT adapters, a LoRA and base rows (left padding in the ReFT rows) equals a separate pass
    of each block of rows under its own adapter."""
    model = reft_model(arch, "loreft[layers=[0,1],prefix_positions=2,suffix_positions=1,r=2]")
    model.add_adapter("b", "direft[prefix_positions=1,suffix_positions=2,r=2]")
    noisy(model._adapterhub.adapters["b"], seed=5)
    model.add_adapter("lora", "lora[r=2]")
    noisy(model._adapterhub.adapters["lora"], seed=9)
    ids = torch.randint(3, 90, (7, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[3, :1] = 0
    sizes = [2, 2, 2, 1]
    together = run(
        model, BatchSplit("a", "b", "lora", None, batch_sizes=sizes), input_ids=ids, attention_mask=mask
    )
    start = 0
    for setup, size in zip(["a", "b", "lora", None], sizes, strict=True):
        rows = slice(start, start + size)
        alone = run(model, setup, input_ids=ids[rows], attention_mask=mask[rows])
        torch.testing.assert_close(together[rows], alone, atol=1e-5, rtol=0)
        start += size
    assert not torch.allclose(together[:2], run(model, None, input_ids=ids[:2], attention_mask=mask[:2]))
