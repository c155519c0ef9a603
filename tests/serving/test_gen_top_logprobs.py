"""``top_logprobs`` in the generation engine on tiny random Llama and GPT-2 (float32): at every position of a greedy
generation (an adapter and the base in one batch) the alternatives are ``torch.topk`` of ``log_softmax`` of
transformers' logits for that prefix and the chosen token is their first; sampled requests list the top of the
processed distribution (temperature / top-k / top-p), filtered tokens left out; the lists follow the ids through a
stop string and a cancel; bad values are refused at submit."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.serving import GenerationEngine
from adapterhub.serving.sampling import MAX_TOP_LOGPROBS, SamplingParams, process_logits
from tiny_models import build, perturb

NEW = 8
TOP = 5


def _model(arch: str) -> Any:
    model = build(arch, "causal_lm", seed=0)
    adapterhub.init(model)
    model.add_adapter("a", "lora")
    perturb(model._store.adapters["a"], std=0.2, seed=10)
    return model


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request: pytest.FixtureRequest) -> Any:
    return _model(request.param)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in (5, 9, 3)]


def _reference(model: Any, prompt: list[int], ids: list[int], adapter: str | None) -> list[torch.Tensor]:
    """``log_softmax`` of transformers' last-position logits ``(V,)`` for each prefix ``prompt + ids[:j]``."""
    with torch.no_grad(), model.adapter_setup(adapter):
        return [
            torch.log_softmax(model(input_ids=torch.tensor([prompt + ids[:j]])).logits[0, -1].float(), dim=-1)
            for j in range(len(ids))
        ]


def test_greedy_top_logprobs_are_topk_of_log_softmax_of_the_model_logits(model, prompts):
    engine = GenerationEngine(model, stop_ids=[])
    adapters = ["a", None, "a"]
    done = engine.complete(prompts, adapters=adapters, max_new_tokens=NEW, logprobs=True, top_logprobs=TOP)
    for prompt, adapter, c in zip(prompts, adapters, done, strict=True):
        assert c.top_logprobs is not None and c.logprobs is not None
        assert len(c.ids) == len(c.logprobs) == len(c.top_logprobs) == NEW
        reference = _reference(model, prompt, c.ids, adapter)
        for j, (token, lp, top) in enumerate(zip(c.ids, c.logprobs, c.top_logprobs, strict=True)):
            expected = reference[j]
            values, ids = torch.topk(expected, TOP)
            assert [t for t, _ in top] == ids.tolist(), j
            torch.testing.assert_close(torch.tensor([v for _, v in top]), values, atol=1e-4, rtol=0)
            assert top[0][0] == token and abs(top[0][1] - lp) < 1e-6  # greedy: the chosen token is the top-1


def test_sampled_top_logprobs_come_from_the_processed_distribution(model, prompts):
    engine = GenerationEngine(model, stop_ids=[])
    params = {"temperature": 0.7, "top_k": 3, "top_p": 0.95}
    (done,) = engine.complete(
        [prompts[1]], adapters=["a"], max_new_tokens=NEW, seed=4, logprobs=True, top_logprobs=10, **params
    )
    assert done.top_logprobs is not None and len(done.top_logprobs) == NEW
    sp = SamplingParams(**params)
    with torch.no_grad(), model.adapter_setup("a"):
        for j, (token, lp, top) in enumerate(
            zip(done.ids, done.logprobs or [], done.top_logprobs, strict=True)
        ):
            logits = model(input_ids=torch.tensor([prompts[1] + done.ids[:j]])).logits[:, -1]  # (1, V)
            processed = torch.log_softmax(process_logits(logits, sp), dim=-1)[0]  # (V,)
            kept = int(torch.isfinite(processed).sum())
            assert 1 <= len(top) == kept <= 3  # the filtered tokens (probability 0) are left out
            values, ids = torch.topk(processed, kept)
            assert [t for t, _ in top] == ids.tolist()
            torch.testing.assert_close(torch.tensor([v for _, v in top]), values, atol=1e-4, rtol=0)
            assert dict(top)[token] == lp  # the chosen token is one of them, with the same logprob


def test_top_logprobs_follow_the_ids_through_a_stop_and_a_cancel(prompts):
    model = _model("llama")
    engine = GenerationEngine(model, stop_ids=[])
    (full,) = engine.generate([prompts[0]], max_new_tokens=NEW)
    handle = engine.submit(prompts[0], max_new_tokens=NEW, stop_ids=[full[3]], logprobs=True, top_logprobs=2)
    done = handle.completion()
    cut = full.index(full[3]) + 1
    assert done.ids == full[:cut] and done.top_logprobs is not None and len(done.top_logprobs) == cut
    assert all(len(t) == 2 for t in done.top_logprobs)

    handle = engine.submit(prompts[0], max_new_tokens=NEW, logprobs=True, top_logprobs=1)
    engine.step()
    engine.step()
    handle.cancel()
    done = handle.completion()
    assert done.finish_reason == "cancelled" and len(done.ids) == len(done.top_logprobs or []) == 2

    plain = engine.submit(prompts[0], max_new_tokens=2, logprobs=True)
    assert plain.completion().top_logprobs is None
    with pytest.raises(ConfigError, match="top_logprobs=N"):
        plain.top_logprobs  # noqa: B018


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"logprobs": True, "top_logprobs": MAX_TOP_LOGPROBS + 1},
            "top_logprobs must be an integer from 0 to 20",
        ),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs must be an integer from 0 to 20"),
        ({"logprobs": True, "top_logprobs": 2.5}, "top_logprobs must be an integer"),
        ({"logprobs": True, "top_logprobs": True}, "top_logprobs must be an integer"),
        ({"top_logprobs": 3}, "top_logprobs=3 needs logprobs=True"),
        ({"top_logprob": 3}, "did you mean 'top_logprobs'"),
    ],
)
def test_bad_top_logprobs_are_refused_at_submit(prompts, kwargs, match):
    engine = GenerationEngine(_model("llama"))
    with pytest.raises(ConfigError, match=match):
        engine.submit(prompts[0], max_new_tokens=2, **kwargs)
    assert engine.stats()["waiting"] == 0


def test_a_streamed_token_finds_its_logprobs_already_there(prompts):
    """The stream's reader may run while the stepping thread still emits: when token k is on the stream,
    ``handle.logprobs`` / ``handle.top_logprobs`` already hold k + 1 entries (the waker runs right after each emit)."""
    engine = GenerationEngine(_model("llama"), stop_ids=[])
    handle = engine.submit(prompts[1], max_new_tokens=NEW, logprobs=True, top_logprobs=2)
    seen: list[tuple[int, int]] = []
    handle._seq.waker = lambda: seen.append((len(handle.logprobs), len(handle.top_logprobs)))
    handle.result()
    assert seen == [(k, k) for k in range(1, NEW + 1)] + [
        (NEW, NEW)
    ]  # after each token's emit, then the end's
