"""The inference-overhead timer of ``adapterhub compare`` (adapterhub.training.overhead)."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.training.overhead import inference_overhead


class _Twice(nn.Module):
    """Runs the wrapped model twice per call: exactly double the work of the bare model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **inputs: torch.Tensor) -> object:
        inputs = {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}  # (batch[*choices], seq)
        self.inner(**inputs)
        out = self.inner(**inputs)
        return transformers.modeling_outputs.SequenceClassifierOutput(logits=out.last_hidden_state[:, 0])


def _bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=200, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
    )
    return transformers.BertModel(config).eval()


def _batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(0, 200, (16, 64), generator=gen),
            "attention_mask": torch.ones(16, 64, dtype=torch.long),
            "labels": torch.zeros(16, dtype=torch.long),
        }
        for _ in range(3)
    ]


def test_double_work_measures_about_twice_the_bare_time():
    bare = _bert()
    result = inference_overhead(_Twice(bare), bare, _batches(), "classification", rounds=5)
    assert result["rounds"] == 4
    # twice the same forward: the median of interleaved per-round ratios sits near 2 even on a busy machine
    assert 1.4 < result["ratio"] < 2.9, result
    assert result["model_seconds"] > result["bare_seconds"] > 0


def test_multiple_choice_batches_are_flattened_for_the_bare_model():
    bare = _bert()
    batch = {k: v.reshape(4, 4, 64) for k, v in _batches()[0].items() if k != "labels"}
    batch["labels"] = torch.zeros(4, dtype=torch.long)
    seen: list[tuple[int, ...]] = []
    handle = bare.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        inference_overhead(_Twice(bare), bare, [batch], "multiple_choice", rounds=2)
    finally:
        handle.remove()
    assert (16, 64) in seen


@pytest.mark.parametrize(
    ("batches", "rounds", "message"), [([], 3, "at least one dev batch"), (None, 1, "at least 2")]
)
def test_bad_arguments_are_refused(batches, rounds, message):
    bare = _bert()
    with pytest.raises(ConfigError, match=message):
        inference_overhead(
            bare, bare, _batches() if batches is None else batches, "classification", rounds=rounds
        )
