"""Reading and writing single files, atomically and with errors that say which file is broken and why."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, load_file, save_file

from adapterhub.errors import AdapterFileError


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory and rename it over ``path``: readers see the old
    file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterFileError(f"{path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterFileError(
            f"{path} is not valid JSON ({error}); the file is corrupted, save it again."
        ) from None


def write_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor]) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(Path(path), lambda tmp: save_file(contiguous, str(tmp), metadata={"format": "pt"}))


def write_torch_pickle(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor]) -> None:
    """A ``.bin`` state dict (tensors only) for readers that expect one, such as the `adapters` library."""
    contiguous = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    _atomic_write(Path(path), lambda tmp: torch.save(contiguous, str(tmp)))


# files up to this size are read in one go and their tensors built from the bytes (a server loading adapters on
# demand: half the Python time of mapping the file); larger ones are memory-mapped (no second copy in memory)
WHOLE_READ_BYTES = 64 << 20


def read_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file in the order of their data in the file, on the CPU (exactly
    ``safetensors.torch.load_file``'s); AdapterFileError for a missing, truncated or corrupted file."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path} does not exist.")
    try:
        if path.stat().st_size <= WHOLE_READ_BYTES:
            with safe_open(str(path), framework="pt") as handle:  # the header: load_file's order of the names
                order = handle.offset_keys()
            loaded = load(path.read_bytes())
            return {name: loaded[name] for name in order}
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise AdapterFileError(
            f"{path} is not a readable safetensors file ({error}); it is truncated or corrupted. "
            "Download or save the adapter again."
        ) from None


def read_torch_pickle(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a ``.bin`` state dict of the `adapters` library, refusing anything but tensors (weights_only)."""
    path = Path(path)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AdapterFileError(f"{path} does not exist.") from None
    except Exception as error:  # torch raises many types for broken or unsafe pickles
        raise AdapterFileError(
            f"{path} could not be read as a weights-only PyTorch file ({type(error).__name__}: {error}); "
            "it is truncated, corrupted or contains more than tensors."
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise AdapterFileError(f"{path} does not hold a state dict of tensors.")
    return data
