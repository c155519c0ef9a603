"""LoRA on ``nn.Embedding`` (peft's ``lora_embedding_A`` ``(r, num_embeddings)`` / ``lora_embedding_B``
``(embedding_dim, r)``) and on ``nn.Conv2d`` (``lora_A`` ``(r, c_in, kh, kw)``, ``lora_B`` ``(c_out, r, 1, 1)``)
targeted by name: validated from their files, published to the embedded hub and loaded back with identical
outputs; the manifest records each module's kind and shapes."""

from __future__ import annotations

import re

import hubkit
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import adapterhub
from adapterhub.errors import AdapterFileError
from adapterhub.hub import client
from adapterhub.hub.server.header_inspect import inspect_from_headers
from adapterhub.io.manifest import inspect_adapter_dir
from tiny_models import build, make_inputs, make_pixel_inputs, perturb


@pytest.fixture
def live(sqlite_env, monkeypatch):
    with hubkit.ThreadServer(sqlite_env.app) as server:
        monkeypatch.setenv("ADAPTERHUB_HUB_URL", server.url)
        yield sqlite_env


def _model(arch, kind):
    model = adapterhub.init(build(arch, kind))
    model.config.name_or_path = f"tiny-{arch}"
    return model


def _out(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


CASES = [
    ("llama", "causal_lm", ["embed_tokens", "q_proj"], make_inputs),
    ("bert", "base", ["word_embeddings", "query"], make_inputs),
    ("vit", "base", ["projection", "q_proj"], make_pixel_inputs),
]


@pytest.mark.parametrize(("arch", "kind", "targets", "inputs_of"), CASES)
def test_embedding_and_conv_lora_publish_and_load_back(live, tmp_path, arch, kind, targets, inputs_of):
    inputs = inputs_of()
    source = _model(arch, kind)
    source.add_adapter(
        "k", {"method": "lora", "r": 2, "alpha": 4, "target_modules": targets}, set_active=True
    )
    perturb(source._adapterhub.adapters["k"], std=0.2)
    expected = _out(source, inputs)
    source.save_adapter(tmp_path / "k", "k")
    manifest = inspect_adapter_dir(tmp_path / "k")
    assert manifest.method == "lora" and manifest.model_type == arch
    pushed = client.push_adapter_dir(
        tmp_path / "k", owner="alice", name="k", task="sentiment", subtask="sst-2", token=live.tokens["alice"]
    )
    assert pushed["version"] == 1
    target = _model(arch, kind)
    assert not torch.equal(_out(target, inputs), expected)
    assert target.load_adapter("@alice/k", set_active=True) == "k"
    torch.testing.assert_close(_out(target, inputs), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("arch", "kind", "targets", "inputs_of"), CASES)
def test_manifest_records_the_modules_the_same_in_both_checks(tmp_path, arch, kind, targets, inputs_of):
    model = _model(arch, kind)
    model.add_adapter("k", {"method": "lora", "r": 2, "target_modules": targets})
    directory = model.save_adapter(tmp_path / "k", "k")
    full, light = inspect_adapter_dir(directory), inspect_from_headers(directory)
    assert full.modules == light.modules
    by_path = {m.path: m for m in full.modules}
    for path, module in model.named_modules():
        if isinstance(module, nn.Embedding) and path in by_path:
            assert (by_path[path].kind, by_path[path].d_in, by_path[path].d_out) == (
                "linear",
                module.num_embeddings,
                module.embedding_dim,
            )
        if isinstance(module, nn.Conv2d) and path in by_path:
            shape = by_path[path]
            assert (shape.kind, shape.r, shape.d_in, shape.d_out, shape.kernel) == (
                "conv2d",
                2,
                module.in_channels,
                module.out_channels,
                module.kernel_size,
            )
    assert any(m.kind == ("conv2d" if arch == "vit" else "linear") and m.layer is None for m in full.modules)


def test_conv_lora_with_a_wrong_up_kernel_is_refused_by_both_checks(tmp_path):
    model = _model("vit", "base")
    model.add_adapter("k", {"method": "lora", "r": 2, "target_modules": ["projection"]})
    directory = model.save_adapter(tmp_path / "k", "k")
    weights = load_file(directory / "adapter.safetensors")
    key = "by_name.embeddings:patch_embeddings:projection.lora_B"
    weights[key] = torch.zeros(weights[key].shape[0], 2, 3, 3)
    save_file(weights, directory / "adapter.safetensors")
    message = (
        r"'embeddings.patch_embeddings.projection' \(lora_A \(2, 3, 4, 4\), lora_B \(32, 2, 3, 3\)\) are not"
    )
    with pytest.raises(AdapterFileError, match=message):
        inspect_from_headers(directory)
    # the full check builds the Conv2d LoRA from lora_A and names the misfit weight
    with pytest.raises(
        AdapterFileError, match=re.escape("projection.lora_B: (32, 2, 3, 3) != (32, 2, 1, 1)")
    ):
        inspect_adapter_dir(directory)


@pytest.mark.parametrize(
    ("arch", "kind", "targets", "inputs_of"),
    [
        ("llama", "causal_lm", ["embed_tokens", "q_proj"], make_inputs),
        ("vit", "base", ["projection", "q_proj"], make_pixel_inputs),
    ],
)
def test_peft_embedding_and_conv_files_publish_and_load_back(live, tmp_path, arch, kind, targets, inputs_of):
    """peft's own files (lora_embedding_A/B; a Conv2d's 4-d lora_A/B) through the hub give peft's outputs."""
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(
        build(arch, kind), peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets)
    ).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(tmp_path / "p")
    inputs = inputs_of()
    expected = _out(theirs, inputs)
    manifest = inspect_adapter_dir(tmp_path / "p", model_type=arch)
    kinds = {m.path: m.kind for m in manifest.modules}
    assert kinds["embeddings.patch_embeddings.projection" if arch == "vit" else "model.embed_tokens"] == (
        "conv2d" if arch == "vit" else "linear"
    )
    client.push_adapter_dir(
        tmp_path / "p",
        owner="alice",
        name="p",
        task="sentiment",
        subtask="sst-2",
        token=live.tokens["alice"],
        model_type=arch,
    )
    target = _model(arch, kind)
    target.load_adapter("@alice/p", set_active=True)
    torch.testing.assert_close(_out(target, inputs), expected, atol=1e-5, rtol=0)
