"""Prompt tuning on every supported architecture (GPT-2 refused): identity when inactive, the prompt's positions,
masks, heads, training, round trips, composition, deinit."""

from __future__ import annotations

import pytest
import torch
import transformers

import adapterhub
from adapterhub import Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapterhub.api.model import deinit
from adapterhub.errors import ConfigError, UnsupportedArchitectureError
from method_checks import ACTIVE, count_adapter_hooks, hidden
from tiny_models import ARCHITECTURES, DECODERS, build, make_inputs

ON_4X = int(transformers.__version__.split(".")[0]) < 5
ARCHS = [a for a in ARCHITECTURES if a not in ("gpt2", "deberta-v2")]  # refused there


if ON_4X:  # everything below needs prompt tuning to be available
    pytestmark = pytest.mark.skip(
        reason="prompt tuning needs transformers >= 5 (refusal: tests/methods/test_versions.py)"
    )
P = 3
CONFIG = f"prompt_tuning[prompt_length={P}]"


def make(arch, kind="base", names=("p",), config=CONFIG, **build_kwargs):
    model = adapterhub.init(build(arch, kind, **build_kwargs))
    for name in names:
        model.add_adapter(name, config=config)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_inactive_identical_prompt_positions_in_front_and_deinit(arch):
    inputs = make_inputs()
    plain = build(arch)
    with torch.no_grad():
        base = plain(**inputs).last_hidden_state
    model = make(arch)
    assert torch.equal(hidden(model, inputs), base)
    out = hidden(model, inputs, "p")
    assert out.shape == (3, P + 7, base.shape[-1])
    assert not torch.allclose(out[:, P:], base, atol=1e-4)
    # padding: a padded row's positions equal the same row unpadded; no mask == all-ones mask
    alone = hidden(model, {"input_ids": inputs["input_ids"][2:, :5]}, "p")
    torch.testing.assert_close(out[2:, : P + 5], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        hidden(model, {"input_ids": inputs["input_ids"][:2]}, "p"), out[:2], atol=1e-5, rtol=0
    )
    if arch in DECODERS:  # causal: the prompt and earlier tokens only
        short = hidden(model, {"input_ids": inputs["input_ids"][:2, :4]}, "p")
        torch.testing.assert_close(short, out[:2, : P + 4], atol=1e-5, rtol=0)
    model.set_active_adapters("p")
    deinit(model)
    assert count_adapter_hooks(model) == 0
    with torch.no_grad():
        assert torch.equal(model(**inputs).last_hidden_state, base)


def test_gpt2_is_refused_with_the_reason():
    model = adapterhub.init(build("gpt2"))
    with pytest.raises(ConfigError, match=r"gpt2.*attention mask"):
        model.add_adapter("p", config=CONFIG)


def test_eager_and_sdpa_agree_and_the_prompt_is_the_embedding_prefix():
    inputs = make_inputs()
    sdpa = make("bert")
    eager = make("bert", attn_implementation="eager")
    eager._adapterhub.adapters["p"].load_state_dict(sdpa._adapterhub.adapters["p"].state_dict())
    torch.testing.assert_close(hidden(eager, inputs, "p"), hidden(sdpa, inputs, "p"), atol=1e-5, rtol=0)
    # reference: the prompt prepended to the embedding output by hand, the mask extended by hand
    plain = build("bert")
    prompt = sdpa._adapterhub.adapters["p"].prompt_embedding.weight
    with torch.no_grad():
        emb = plain.embeddings(input_ids=inputs["input_ids"])
        x = torch.cat([prompt.unsqueeze(0).expand(3, -1, -1), emb], dim=1)
        mask = torch.cat([torch.ones(3, P, dtype=torch.long), inputs["attention_mask"]], dim=1)
        ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in plain.encoder.layer:
            x = layer(x, attention_mask=ext)
            x = x[0] if isinstance(x, tuple) else x
    torch.testing.assert_close(hidden(sdpa, inputs, "p"), x, atol=1e-5, rtol=0)


def test_config_from_string_ids_and_errors():
    model = adapterhub.init(build("bert"))
    model.add_adapter(
        "s",
        config={
            "method": "prompt_tuning",
            "prompt_length": 5,
            "prompt_init": "from_string",
            "prompt_init_ids": [7, 8],
        },
    )
    words = model.get_input_embeddings().weight
    got = model._adapterhub.adapters["s"].prompt_embedding.weight
    assert torch.equal(got, words[[7, 8, 7, 8, 7]])
    with pytest.raises(ConfigError, match="prompt_init_text"):
        adapterhub.spec.configs.resolve_config("prompt_tuning[prompt_init=from_string]")
    with pytest.raises(ConfigError, match="combine"):
        adapterhub.spec.configs.resolve_config("prompt_tuning[combine=prefix_after_bos]")
    with pytest.raises(ConfigError, match="prompt_length"):
        adapterhub.spec.configs.resolve_config("prompt_tuning[prompt_length=0]")
    config = adapterhub.spec.configs.resolve_config("prompt_tuning")
    assert (
        config.prompt_length == 10 and config.prompt_init == "random_uniform" and config.combine == "prefix"
    )
    weights = model._adapterhub.adapters
    model.add_adapter("r", config="prompt_tuning")
    assert weights["r"].prompt_embedding.weight.abs().max() <= 0.5


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_flexible_heads_see_the_real_positions(arch):
    inputs = make_inputs()
    model = make(arch)
    out = hidden(model, inputs, "p")
    model.add_classification_head("p", num_labels=2)
    model.set_active_adapters("p")
    head = model._adapterhub.heads["p"]
    from adapterhub.runtime.head_inputs import HeadInputs

    with torch.no_grad():
        logits = model(**inputs).logits
        reference = head(
            HeadInputs(
                hidden=out[:, P:], attention_mask=inputs["attention_mask"], input_ids=inputs["input_ids"]
            )
        ).logits
    torch.testing.assert_close(logits, reference, atol=1e-6, rtol=0)
    model.add_tagging_head("t", num_labels=4)
    model.active_head = "t"
    with torch.no_grad():
        tags = model(**inputs, labels=torch.zeros(3, 7, dtype=torch.long))
    assert tags.logits.shape == (3, 7, 4) and tags.loss is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_one_training_step_changes_only_the_prompt_and_head(arch):
    inputs = make_inputs()
    model = make(arch, names=("p", "q"))
    model.add_classification_head("p", num_labels=2)
    model.train_adapter("p")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**inputs, labels=torch.tensor([0, 1, 1])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "_adapterhub.adapters.p.prompt_embedding.weight" in changed
    assert all(n.startswith(("_adapterhub.adapters.p.", "_adapterhub.heads.p.")) for n in changed), changed


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, tmp_path):
    inputs = make_inputs()
    model = make(arch)
    expected = hidden(model, inputs, "p")
    model.save_adapter(tmp_path / "p", "p")
    fresh = adapterhub.init(build(arch))
    fresh.load_adapter(tmp_path / "p", set_active=True)
    assert torch.equal(hidden(fresh, inputs, ACTIVE), expected)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_composition(arch):
    inputs = make_inputs()
    model = make(arch, names=("p", "q"))
    model.add_adapter("b", config="pfeiffer")
    model.add_adapter("inv", config="seq_bn_inv")
    with torch.no_grad():
        for p in model._adapterhub.adapters["inv"].inv.parameters():
            p.add_(0.1)
    # Stack: the first adapter's prompt; a later prompt is left out
    torch.testing.assert_close(
        hidden(model, inputs, Stack("p", "q")), hidden(model, inputs, "p"), atol=0, rtol=0
    )
    # a prompt under a bottleneck adapter: both apply
    stacked = hidden(model, inputs, Stack("p", "b"))
    assert stacked.shape[1] == P + 7 and not torch.allclose(stacked, hidden(model, inputs, "p"), atol=1e-4)
    # an invertible adapter first: its coupling applies, the prompt does not (the `adapters` library's rule)
    assert hidden(model, inputs, Stack("inv", "p")).shape[1] == 7
    # BatchSplit (equal prompt lengths) == separate passes
    out = hidden(model, inputs, BatchSplit("p", "q", batch_sizes=[2, 1]))
    rows = [
        hidden(model, {k: v[:2] for k, v in inputs.items()}, "p"),
        hidden(model, {k: v[2:] for k, v in inputs.items()}, "q"),
    ]
    torch.testing.assert_close(out, torch.cat(rows), atol=1e-5, rtol=0)
    # refused blocks name the block and the method
    for block in (Fuse("p", "q"), Average("p", "q"), Parallel("p", "q"), Split("p", "q", split_index=2)):
        with pytest.raises(ConfigError, match=rf"{type(block).__name__}.*prompt_tuning"):
            model.set_active_adapters(block)
    # a BatchSplit of a prompt and an adapter without one would give rows of different lengths
    with pytest.raises(UnsupportedArchitectureError, match="prompt_length"):
        hidden(model, inputs, BatchSplit("p", "b", batch_sizes=[2, 1]))


def test_decoder_refusals():
    inputs = make_inputs()
    model = make("llama", kind="causal_lm")
    model.set_active_adapters("p")
    # explicit position ids: the prompt takes 0..P-1 and the tokens move by P (as without position_ids)
    with torch.no_grad():
        torch.testing.assert_close(
            model(**inputs, position_ids=torch.arange(7).unsqueeze(0)).logits, model(**inputs).logits
        )
    with pytest.raises(UnsupportedArchitectureError, match="input_ids"):
        model(inputs_embeds=torch.randn(3, 7, 32))
    with pytest.raises(UnsupportedArchitectureError, match="use_cache=False"):
        model.generate(input_ids=inputs["input_ids"][:1], max_new_tokens=2, do_sample=False)
    out = model.generate(
        input_ids=inputs["input_ids"][:1], max_new_tokens=2, do_sample=False, use_cache=False
    )
    assert out.shape == (1, 9)
