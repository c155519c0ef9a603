"""wav2vec2 (post-LN and stable-LN layers) and Whisper (an encoder-decoder with mBART's layers) carry the adapter
methods: inactive adapters leave the model bit-identical, active ones change it, training changes only the adapter,
save/load round trips, merging, row blocks; wav2vec2's CTC head trains through adapters; Whisper generates with
an adapter exactly as greedy full forward passes do. Prompt tuning and invertible adapters, which attach at token
embeddings, are refused on wav2vec2 with the reason.

The tiny wav2vec2 reads 400 raw samples (48 frames after its convolutions); the tiny Whisper 8 mel bins x 20
frames."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adapterhub
from adapterhub import BatchSplit, Fuse, Stack
from adapterhub.errors import AdapterHubError
from method_checks import check_row_blocks
from method_checks import perturb as nudge
from tiny_models import build, make_audio_inputs, make_whisper_inputs, perturb

# config string -> the method name its saved manifest records
METHODS = {
    "pfeiffer": "bottleneck",
    "houlsby": "bottleneck",
    "parallel": "parallel",
    "compacter[reduction_factor=4]": "compacter",
    "lora[targets=[q,k,v,attn_out,ffn_in,ffn_out]]": "lora",
    "dora": "dora",
    "ia3": "ia3",
    "prefix_tuning[prefix_length=3]": "prefix_tuning",
    "mam": "union",
    "unipelt": "union",
}
MERGEABLE = ["lora[targets=[q,k,v,attn_out,ffn_in,ffn_out]]", "dora", "ia3"]
LAYER_NORMS = {"post_ln": {}, "stable_ln": {"do_stable_layer_norm": True}}


def wav2vec2(
    layer_norm: str, kind: str = "base", names: tuple[str, ...] = ("a", "b"), config: str | None = None
):
    model = adapterhub.init(build("wav2vec2", kind, **LAYER_NORMS[layer_norm]))
    for i, name in enumerate(names if config else ()):
        model.add_adapter(name, config=config)
        nudge(model._adapterhub.adapters[name], seed=10 + i)
    return model


def frames(model: Any, inputs: dict[str, torch.Tensor], setup: Any = "__active__") -> torch.Tensor:
    with torch.no_grad():
        if setup == "__active__":
            return model(**inputs).last_hidden_state
        with model.adapter_setup(setup):
            return model(**inputs).last_hidden_state


@pytest.fixture
def audio():
    return make_audio_inputs()


# ------------------------------------------------------------------------------------------------ wav2vec2


@pytest.mark.parametrize("layer_norm", LAYER_NORMS)
@pytest.mark.parametrize("config", METHODS)
def test_wav2vec2_inactive_is_bit_identical_and_active_changes_outputs(layer_norm, config, audio):
    model = wav2vec2(layer_norm, config=config)
    reference = build("wav2vec2", **LAYER_NORMS[layer_norm])(**audio).last_hidden_state
    assert torch.equal(frames(model, audio, None), reference)
    assert not torch.allclose(frames(model, audio, "a"), reference, atol=1e-4)


@pytest.mark.parametrize("layer_norm", LAYER_NORMS)
@pytest.mark.parametrize("config", ["pfeiffer", "lora", "prefix_tuning[prefix_length=3]", "unipelt"])
def test_wav2vec2_ctc_training_changes_only_the_adapter_and_the_ctc_head(layer_norm, config, audio):
    """``train_adapter`` trains the model's built-in head (the CTC ``lm_head``) with the adapter."""
    model = wav2vec2(layer_norm, "ctc", names=("a",), config=config)
    model.train_adapter("a")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    labels = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, -100]])
    model(**audio, labels=labels).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"lm_head.weight", "lm_head.bias"} < changed
    assert any(n.startswith("_adapterhub.adapters.a.") for n in changed)
    assert all(n.startswith(("_adapterhub.adapters.a.", "lm_head.")) for n in changed)


@pytest.mark.parametrize("config", METHODS)
def test_wav2vec2_save_and_load_round_trip(config, audio, tmp_path):
    from adapterhub.io.manifest import inspect_adapter_dir

    model = wav2vec2("post_ln", config=config)
    expected = frames(model, audio, "a")
    model.save_adapter(tmp_path / "a", "a")
    fresh = wav2vec2("post_ln")
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(frames(fresh, audio), expected)
    manifest = inspect_adapter_dir(tmp_path / "a")
    assert manifest.method == METHODS[config]
    assert manifest.num_parameters == model.adapter_summary()["a"].parameters


@pytest.mark.parametrize("layer_norm", LAYER_NORMS)
@pytest.mark.parametrize("config", MERGEABLE)
def test_wav2vec2_merged_equals_unmerged(layer_norm, config, audio):
    model = wav2vec2(layer_norm, config=config)
    model.set_active_adapters("a")
    unmerged = frames(model, audio)
    model.merge_adapter("a")
    torch.testing.assert_close(frames(model, audio), unmerged, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(frames(model, audio), unmerged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", ["pfeiffer", "lora", "ia3"])
def test_wav2vec2_row_blocks_and_parallel_give_each_row_its_adapter(config, audio):
    check_row_blocks(wav2vec2("post_ln", config=config), audio)


def test_wav2vec2_prefix_tuning_row_blocks_respect_padding(audio):
    model = wav2vec2("post_ln", config="prefix_tuning[prefix_length=3]")
    out = frames(model, audio, BatchSplit("a", "b", batch_sizes=[1, 2]))
    first = frames(model, {k: v[:1] for k, v in audio.items()}, "a")
    rest = frames(model, {k: v[1:] for k, v in audio.items()}, "b")
    torch.testing.assert_close(out, torch.cat([first, rest]), atol=1e-5, rtol=0)


def test_wav2vec2_stack_and_fusion(audio):
    model = wav2vec2("post_ln", config="pfeiffer")
    stacked = frames(model, audio, Stack("a", "b"))
    assert not torch.allclose(stacked, frames(model, audio, "a"), atol=1e-4)
    model.add_adapter_fusion(Fuse("a", "b"))
    fused = frames(model, audio, Fuse("a", "b"))
    assert torch.isfinite(fused).all() and not torch.allclose(fused, frames(model, audio, "a"), atol=1e-4)


@pytest.mark.parametrize(
    ("config", "why"),
    [("prompt_tuning[prompt_length=3]", "speech encoders"), ("pfeiffer+inv", "speech encoders")],
)
def test_wav2vec2_refuses_methods_that_attach_at_token_embeddings(config, why):
    model = wav2vec2("post_ln")
    with pytest.raises(AdapterHubError, match=why):
        model.add_adapter("x", config=config)
    assert "x" not in model._adapterhub.adapters


# ------------------------------------------------------------------------------------------------ Whisper


def whisper(config: str | None = None) -> Any:
    model = adapterhub.init(build("whisper", "speech_seq2seq"))
    if config:
        model.add_adapter("a", config=config, set_active=True)
        nudge(model._adapterhub.adapters["a"], seed=10)
    return model


def whisper_logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("config", METHODS)
def test_whisper_adapters_change_outputs_and_train_alone(config):
    inputs = make_whisper_inputs()
    bare = whisper_logits(build("whisper", "speech_seq2seq"), inputs)
    model = whisper(config)
    with model.adapter_setup(None):
        assert torch.equal(whisper_logits(model, inputs), bare)
    assert not torch.allclose(whisper_logits(model, inputs), bare, atol=1e-4)
    model.train_adapter("a")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    labels = torch.roll(inputs["decoder_input_ids"], -1, dims=1)
    model(**inputs, labels=labels).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("_adapterhub.adapters.a.") for n in changed)


@pytest.mark.parametrize("config", ["houlsby", "lora", "prefix_tuning[prefix_length=3]"])
def test_whisper_generates_with_the_adapter_as_greedy_forward_passes_do(config):
    inputs = make_whisper_inputs()
    model = whisper(config)
    perturb(model._adapterhub.adapters["a"], std=0.5)
    features = inputs["input_features"]
    generated = model.generate(
        input_features=features,
        max_new_tokens=5,
        min_new_tokens=5,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
    )
    ids = torch.full((3, 1), model.config.decoder_start_token_id, dtype=torch.long)
    reference = []
    with torch.no_grad():
        for _ in range(5):  # full forward passes, no cache: the reference for generate's cached decoding
            logits = model(input_features=features, decoder_input_ids=ids).logits[:, -1]
            reference.append(logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    steps = len(generated.scores)
    assert steps >= 1
    new = generated.sequences[:, -steps:]
    assert torch.equal(new, ids[:, 1 : 1 + steps])
    with model.adapter_setup(None):
        bare = model.generate(
            input_features=features,
            max_new_tokens=1,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    assert not torch.allclose(bare.scores[0], generated.scores[0], atol=1e-4)  # the adapter is used


def test_whisper_lora_merge_and_round_trip(tmp_path):
    inputs = make_whisper_inputs()
    model = whisper("lora[targets=[q,v,cross_q,cross_v,ffn_in]]")
    unmerged = whisper_logits(model, inputs)
    model.save_adapter(tmp_path / "a", "a")
    fresh = whisper()
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(whisper_logits(fresh, inputs), unmerged)
    model.merge_adapter("a")
    torch.testing.assert_close(whisper_logits(model, inputs), unmerged, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(whisper_logits(model, inputs), unmerged, atol=1e-5, rtol=1e-5)
