"""LoHa and LoKr on ``nn.Conv2d`` targeted by name (ViT's patch projection, a 4×4 kernel over 3 channels): their
flattened kernel factors do not say the input channels, so ``save_adapter`` records them (``conv_modules``, from
the model); both checks (full and torch-free) read the convolution from it, refuse factors that do not fit it, and
the adapter publishes to the embedded hub and loads back with identical outputs, in adapterhub's layout and in
peft's (``adapterhub_conv_modules.json`` beside peft's files)."""

from __future__ import annotations

import json

import hubkit
import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub
from adapterhub.errors import AdapterFileError, IncompatibleModelError
from adapterhub.hub import client
from adapterhub.hub.server.header_inspect import inspect_from_headers
from adapterhub.io.manifest import inspect_adapter_dir
from adapterhub.spec.manifest import ModuleShape
from tiny_models import build, make_pixel_inputs, perturb

PATH = "embeddings.patch_embeddings.projection"
KEY = "by_name.embeddings:patch_embeddings:projection"
# LoHa; LoKr with W2 factored (r=2 < max(8, 3) / 2: lokr_w2_b (r, 3·4·4)); LoKr with a full W2 (b, d, kh, kw)
CONFIGS = [
    {"method": "loha", "r": 2, "alpha": 4},
    {"method": "lokr", "r": 2, "alpha": 4},
    {"method": "lokr", "r": 4, "alpha": 4},
    # peft's use_effective_conv2d: CP-decomposed kernels (hada_t1 / hada_t2, lokr_t2 (r, r, 4, 4)), which say it all
    {"method": "loha", "r": 2, "alpha": 4, "use_effective_conv2d": True},
    {"method": "lokr", "r": 2, "alpha": 4, "use_effective_conv2d": True},
]
IDS = ["loha", "lokr-factored", "lokr-full", "loha-cp", "lokr-cp"]


@pytest.fixture
def live(sqlite_env, monkeypatch):
    with hubkit.ThreadServer(sqlite_env.app) as server:
        monkeypatch.setenv("ADAPTERHUB_HUB_URL", server.url)
        yield sqlite_env


def _model():
    model = adapterhub.init(build("vit", "base"))
    model.config.name_or_path = "tiny-vit"
    return model


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _source(config):
    model = _model()
    model.add_adapter("k", {**config, "target_modules": ["projection", "q_proj"]}, set_active=True)
    perturb(model._adapterhub.adapters["k"], std=0.2)
    return model


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_conv_lycoris_publishes_and_loads_back_identical(live, tmp_path, config):
    inputs = make_pixel_inputs()
    source = _source(config)
    expected = _out(source, inputs)
    directory = source.save_adapter(tmp_path / "k", "k")
    declared = json.loads((directory / "adapter_config.json").read_text())["conv_modules"]
    assert declared == {PATH: {"in_channels": 3, "kernel_size": [4, 4]}}
    full, light = inspect_adapter_dir(directory), inspect_from_headers(directory)
    conv = [m for m in full.modules if m.path == PATH]
    full_w2 = f"{KEY}.lokr_w2" in load_file(directory / "adapter.safetensors")
    assert conv == [ModuleShape(PATH, "conv2d", 0 if full_w2 else config["r"], 3, 32, (4, 4))]
    assert full.modules == light.modules
    client.push_adapter_dir(
        directory, owner="alice", name="k", task="sentiment", subtask="sst-2", token=live.tokens["alice"]
    )
    target = _model()
    assert not torch.equal(_out(target, inputs), expected)
    assert target.load_adapter("@alice/k", set_active=True) == "k"
    torch.testing.assert_close(_out(target, inputs), expected, atol=1e-6, rtol=0)


def _edit_config(directory, **changes):
    path = directory / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_declared_in_channels_the_factors_do_not_fit_are_refused_by_both_checks(tmp_path, config):
    directory = _source(config).save_adapter(tmp_path / "k", "k")
    _edit_config(directory, conv_modules={PATH: {"in_channels": 4, "kernel_size": [4, 4]}})
    with pytest.raises(
        AdapterFileError, match=r"of the declared Conv2d \(in_channels 4, kernel_size \(4, 4\)\)"
    ):
        inspect_from_headers(directory)
    with pytest.raises(AdapterFileError, match="projection"):
        inspect_adapter_dir(directory)


def test_a_loha_factor_of_another_width_is_refused_by_both_checks(tmp_path):
    directory = _source(CONFIGS[0]).save_adapter(tmp_path / "k", "k")
    weights = load_file(directory / "adapter.safetensors")
    weights[f"{KEY}.hada_w2_b"] = torch.zeros(2, 47)
    save_file(weights, directory / "adapter.safetensors")
    with pytest.raises(AdapterFileError, match=r"hada_w2_b \(2, 47\)\) are not one update"):
        inspect_from_headers(directory)
    with pytest.raises(AdapterFileError, match=r"hada_w2_b: \(2, 47\) != \(2, 48\)"):
        inspect_adapter_dir(directory)


def test_a_declared_convolution_without_factors_and_a_malformed_declaration_are_refused(tmp_path):
    directory = _source(CONFIGS[0]).save_adapter(tmp_path / "k", "k")
    extra = {
        PATH: {"in_channels": 3, "kernel_size": [4, 4]},
        "pooler.dense": {"in_channels": 3, "kernel_size": [1, 1]},
    }
    _edit_config(directory, conv_modules=extra)
    for check in (inspect_from_headers, inspect_adapter_dir):
        with pytest.raises(AdapterFileError, match="declares the convolution"):
            check(directory)
    _edit_config(directory, conv_modules={PATH: {"in_channels": 3, "kernel_size": 4}})
    for check in (inspect_from_headers, inspect_adapter_dir):
        with pytest.raises(AdapterFileError, match="conv_modules must map module paths"):
            check(directory)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_peft_layout_conv_lycoris_matches_peft_and_publishes(live, tmp_path, config):
    """adapterhub's peft-layout folder: peft computes our outputs from it, and through the hub (the declared
    convolution in adapterhub_conv_modules.json) it loads back identical."""
    peft = pytest.importorskip("peft")
    inputs = make_pixel_inputs()
    source = _source(config)
    expected = _out(source, inputs)
    directory = source.save_adapter(tmp_path / "p", "k", layout="peft")
    assert json.loads((directory / "adapterhub_conv_modules.json").read_text())["conv_modules"] == {
        PATH: {"in_channels": 3, "kernel_size": [4, 4]}
    }
    theirs = peft.PeftModel.from_pretrained(build("vit", "base"), str(directory)).eval()
    torch.testing.assert_close(_out(theirs, inputs), expected, atol=1e-5, rtol=0)
    manifest = inspect_adapter_dir(directory, model_type="vit")
    assert [(m.kind, m.d_in, m.kernel) for m in manifest.modules if m.path == PATH] == [("conv2d", 3, (4, 4))]
    client.push_adapter_dir(
        directory,
        owner="alice",
        name="p",
        task="sentiment",
        subtask="sst-2",
        token=live.tokens["alice"],
        model_type="vit",
    )
    target = _model()
    target.load_adapter("@alice/p", set_active=True)
    torch.testing.assert_close(_out(target, inputs), expected, atol=1e-6, rtol=0)


def _peft_folder(directory, config_class: str):
    """peft's own LoHa / LoKr (``config_class``, random factors) on ViT's patch projection and ``q_proj``, saved into
    ``directory``: ``(pixel inputs, peft's outputs on them)``."""
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(
        build("vit", "base"),
        getattr(peft, config_class)(
            r=2, alpha=4, target_modules=["projection", "q_proj"], init_weights=False
        ),
    ).eval()
    theirs.save_pretrained(directory)
    inputs = make_pixel_inputs()
    return inputs, _out(theirs, inputs)


def _check_published_as_linear_with_peft_outputs(live, directory, inputs, expected) -> None:
    """The folder's manifest reads the convolution as a linear update of the flattened width (48 -> 32); pushed and
    loaded by name into the model, it gives peft's ``expected`` outputs."""
    manifest = inspect_adapter_dir(directory, model_type="vit")
    assert [(m.kind, m.d_in, m.d_out) for m in manifest.modules if m.path == PATH] == [("linear", 48, 32)]
    client.push_adapter_dir(
        directory,
        owner="alice",
        name="p",
        task="sentiment",
        subtask="sst-2",
        token=live.tokens["alice"],
        model_type="vit",
    )
    target = _model()
    target.load_adapter("@alice/p", set_active=True)
    torch.testing.assert_close(_out(target, inputs), expected, atol=1e-5, rtol=0)


def test_peft_own_loha_conv_folder_publishes_and_gives_peft_outputs(live, tmp_path):
    """A folder peft wrote (no declared convolution): LoHa's factors read as a linear update of the flattened
    width, validated so; loaded into the model (which knows it is a Conv2d) it gives peft's outputs."""
    inputs, expected = _peft_folder(tmp_path / "p", "LoHaConfig")
    _check_published_as_linear_with_peft_outputs(live, tmp_path / "p", inputs, expected)


def test_a_model_whose_convolution_differs_with_the_same_flattened_width_is_refused(tmp_path):
    """ViT's 4×4 kernel over 3 channels and a 2×2 kernel over 12 flatten to the same 48 columns: the declared
    convolution tells them apart, so the adapter is refused instead of reshaped wrongly."""
    directory = _source(CONFIGS[0]).save_adapter(tmp_path / "k", "k")
    _edit_config(directory, conv_modules={PATH: {"in_channels": 12, "kernel_size": [2, 2]}})
    with pytest.raises(
        IncompatibleModelError, match=r"12 input channels and kernel \(2, 2\) \(this model: 3 and"
    ):
        _model().load_adapter(directory)


def test_peft_own_factored_lokr_conv_folder_publishes_and_gives_peft_outputs(live, tmp_path):
    """A factored LoKr W2 on a Conv2d from a folder peft wrote (no declared convolution): W1 (4, 1) and W2b (2, 48)
    are not a linear layer's split of 48 inputs (peft's would be 6 · 8), so the full check reads them as the
    flattened kernel of a convolution peft's rules allow and validates the folder as it is (its manifest module a
    linear update of the flattened width, as for LoHa). Loaded into the model it gives peft's outputs; factors that
    are neither a linear layer's nor a convolution's are still refused."""
    inputs, expected = _peft_folder(tmp_path / "p", "LoKrConfig")
    weights = load_file(tmp_path / "p" / "adapter_model.safetensors")
    assert weights[f"base_model.model.{PATH}.lokr_w1"].shape == (4, 1)
    _check_published_as_linear_with_peft_outputs(live, tmp_path / "p", inputs, expected)
    # W1 (4, 7), W2b (2, 4): peft splits no width as 7 · d with d <= 4 (the smaller factor comes first), so these
    # are neither a linear layer's factors nor a convolution's
    weights[f"base_model.model.{PATH}.lokr_w1"] = torch.zeros(4, 7)
    weights[f"base_model.model.{PATH}.lokr_w2_b"] = torch.zeros(2, 4)
    save_file(weights, tmp_path / "p" / "adapter_model.safetensors")
    with pytest.raises(
        AdapterFileError, match=r"lokr_w1: \(4, 7\) != \(4, 4\).*If 'embeddings.patch_embeddings"
    ):
        inspect_adapter_dir(tmp_path / "p", model_type="vit")


# Whisper's encoder stem: two nn.Conv1d (kernel 3; the second with stride 2). LoHa's flattened kernel (c_in·3)
# and its CP cores (r, r, 3, 1) say neither the Conv1d nor its kernel: the files declare them (kernel_size [3]).
CONV1D_CONFIGS = [
    {"method": "loha", "r": 2, "alpha": 4},
    {"method": "loha", "r": 2, "alpha": 4, "use_effective_conv2d": True},
    {"method": "lokr", "r": 1, "alpha": 4},
    {"method": "lokr", "r": 1, "alpha": 4, "use_effective_conv2d": True},
    {"method": "lokr", "r": 8, "alpha": 4},  # W2 full (b, d, 3): its 3-d weight says Conv1d itself
]
CONV1D_IDS = ["loha", "loha-cp", "lokr-factored", "lokr-cp", "lokr-full"]


def _whisper():
    torch.manual_seed(0)
    model = adapterhub.init(build("whisper", "base"))
    model.config.name_or_path = "tiny-whisper"
    return model


def _whisper_out(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


@pytest.mark.parametrize("config", CONV1D_CONFIGS, ids=CONV1D_IDS)
def test_conv1d_lycoris_publishes_and_loads_back_identical(live, tmp_path, config):
    from tiny_models import make_whisper_inputs

    inputs = make_whisper_inputs()
    source = _whisper()
    source.add_adapter("k", {**config, "target_modules": ["conv1", "conv2", "q_proj"]}, set_active=True)
    perturb(source._adapterhub.adapters["k"], std=0.2)
    expected = _whisper_out(source, inputs)
    conv1 = source.get_submodule("encoder.conv1")
    # (layout='peft' writes only LoRA / DoRA on encoder-decoder models; tests/compat/test_peft_lycoris_conv1d.py
    # covers peft's layout on Conv1d)
    directory = source.save_adapter(tmp_path / "adapterhub", "k")
    declared = json.loads((directory / "adapter_config.json").read_text())["conv_modules"]
    assert declared["encoder.conv1"] == {"in_channels": conv1.in_channels, "kernel_size": [3]}
    full, light = inspect_adapter_dir(directory), inspect_from_headers(directory)
    assert full.modules == light.modules
    shapes = {m.path: (m.kind, m.d_in, m.d_out, m.kernel) for m in light.modules}
    assert shapes["encoder.conv1"] == ("conv1d", conv1.in_channels, conv1.out_channels, (3,))
    assert shapes["encoder.conv2"][0] == "conv1d"
    client.push_adapter_dir(
        directory, owner="alice", name="w", task="sentiment", subtask="sst-2", token=live.tokens["alice"]
    )
    target = _whisper()
    assert not torch.allclose(_whisper_out(target, inputs), expected, atol=1e-4)
    assert target.load_adapter("@alice/w", set_active=True) == "k"
    torch.testing.assert_close(_whisper_out(target, inputs), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("config", CONV1D_CONFIGS[:2], ids=CONV1D_IDS[:2])
def test_declared_conv1d_the_factors_do_not_fit_is_refused(tmp_path, config):
    """A declared Conv1d whose channels the factors do not make is refused by both checks; one whose channels and
    kernel flatten to the same width as the model's is refused when it is loaded."""
    source = _whisper()
    source.add_adapter("k", {**config, "target_modules": ["conv1"]})
    directory = source.save_adapter(tmp_path / "k", "k")
    c_in = source.get_submodule("encoder.conv1").in_channels
    _edit_config(directory, conv_modules={"encoder.conv1": {"in_channels": c_in + 1, "kernel_size": [3]}})
    with pytest.raises(
        AdapterFileError, match=rf"of the declared Conv1d \(in_channels {c_in + 1}, kernel_size \(3,\)\)"
    ):
        inspect_from_headers(directory)
    with pytest.raises(AdapterFileError, match="conv1"):
        inspect_adapter_dir(directory)
    if not config.get("use_effective_conv2d") and c_in % 2 == 0:
        # c_in channels · kernel 3 and c_in / 2 channels · kernel 6 flatten to the same width
        _edit_config(
            directory, conv_modules={"encoder.conv1": {"in_channels": c_in // 2, "kernel_size": [6]}}
        )
        with pytest.raises(IncompatibleModelError, match=r"nn.Conv1d 'encoder.conv1' of .* kernel \(6,\)"):
            _whisper().load_adapter(directory)
