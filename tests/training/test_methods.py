"""Each baseline trains exactly its parameters: requires_grad is set accordingly and only those change."""

from __future__ import annotations

import pytest
import torch

from adapterhub.errors import ConfigError
from adapterhub.training import TrainConfig, parse_method, train

HEAD = "_adapterhub.heads.task."
ADAPTER = "_adapterhub.adapters.task."


def expected(name: str, method: str) -> bool:
    """Should parameter ``name`` of the tiny 2-layer BERT train under ``method``?"""
    if name.startswith(HEAD):
        return True
    if method.startswith("adapter"):
        return name.startswith(ADAPTER)
    if method == "full":
        return not name.startswith("_adapterhub.")
    if method == "topk:1":
        return name.startswith("encoder.layer.1.")
    if method == "layernorm":
        return "LayerNorm" in name and not name.startswith("_adapterhub.")
    return False  # head


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# the presets landed with AdaLoRA, ReFT, OFT / BOFT, LN tuning, LoHa / LoKr and VeRA, by name as `compare` takes them
NEW_PRESETS = [
    "adapter:adalora",
    "adapter:loreft",
    "adapter:noreft",
    "adapter:direft",
    "adapter:oft",
    "adapter:boft",
    "adapter:ln_tuning",
    "adapter:loha",
    "adapter:lokr",
    "adapter:vera",
]


@pytest.mark.parametrize(
    "method",
    [
        "full",
        "head",
        "topk:1",
        "layernorm",
        "adapter:pfeiffer[reduction_factor=2]",
        "adapter:houlsby",
        *NEW_PRESETS,
    ],
)
def test_each_method_trains_exactly_its_parameters(method, load_tiny, tiny_tokenizer, sentiment_task):
    model = load_tiny()
    config = TrainConfig(
        method=method,
        max_steps=3,
        learning_rate=1e-2,
        batch_size=8,
        max_length=16,
        progress=False,
        warmup_ratio=0.0,
        restore_best=False,
        eval_every=100,
    )
    import adapterhub
    from adapterhub.training.modeling import HeadSettings, prepare_model

    # the same preparation train() does, to snapshot the starting values of the adapter and head as well
    reference = load_tiny()
    torch.manual_seed(config.seed)
    reference = prepare_model(reference, sentiment_task, method, "task", HeadSettings())
    trainable = {n for n, p in reference.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in reference.named_parameters() if expected(n, method)}
    assert adapterhub.init(reference) is reference

    before = snapshot(reference)
    train(model, sentiment_task, config, tokenizer=tiny_tokenizer)
    after = snapshot(model)
    assert set(after) == set(before)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert any(n.startswith(HEAD) for n in changed)
    if method != "head":
        assert changed - {n for n in changed if n.startswith(HEAD)}, "nothing but the head changed"
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen_with_grad == []


def test_adapter_methods_use_the_config_string():
    method = parse_method("adapter:pfeiffer[reduction_factor=16]")
    assert method.is_adapter and method.adapter_config == "pfeiffer[reduction_factor=16]"
    assert parse_method("adapter").adapter_config == "pfeiffer"
    assert parse_method("topk:3").k == 3
    assert parse_method("full").default_learning_rate == 2e-5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fulll", "did you mean 'full'"),
        ("topk", "positive number of layers"),
        ("topk:0", "positive number of layers"),
        ("topk:x", "positive number of layers"),
        ("head:2", "takes no argument"),
        ("adapter:pfiffer", "pfeiffer"),
        ("adapter:pfeiffer[reduction_factr=2]", "reduction_factor"),
        ("", "non-empty"),
    ],
)
def test_bad_method_flags(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_method(text)


def test_topk_beyond_the_model_depth(load_tiny, tiny_tokenizer, sentiment_task):
    with pytest.raises(ConfigError, match="only 2 layers"):
        train(
            load_tiny(),
            sentiment_task,
            TrainConfig(method="topk:5", max_steps=1, progress=False),
            tokenizer=tiny_tokenizer,
        )
