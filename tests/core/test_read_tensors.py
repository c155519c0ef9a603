"""``io.files.read_tensors`` reads small files whole and maps large ones: either way the tensors, dtypes and name
order (that of the data in the file) of ``safetensors.torch.load_file``; a truncated file is an AdapterFileError saying so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterhub.errors import AdapterFileError
from adapterhub.io import files


def _write(path: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "z.weight": torch.randn(3, 5, generator=generator),
        "a.half": torch.randn(4, generator=generator).to(torch.bfloat16),
        "m.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "b.mask": torch.tensor([True, False, True]),
        "e.empty": torch.zeros(0, 4),
        "s.scalar": torch.tensor(2.5, dtype=torch.float64),
    }
    files.write_tensors(path, tensors)
    return path


@pytest.mark.parametrize("whole", [True, False])
def test_same_tensors_and_order_as_load_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    path = _write(tmp_path / "t.safetensors")
    monkeypatch.setattr(files, "WHOLE_READ_BYTES", 1 << 30 if whole else 0)
    read = files.read_tensors(path)
    reference = load_file(str(path))
    assert list(read) == list(reference)  # the order of the data in the file
    for name, tensor in reference.items():
        assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape
        assert torch.equal(read[name], tensor)
    read["z.weight"].add_(1.0)  # the tensors are the caller's to change
    assert torch.equal(read["z.weight"], reference["z.weight"] + 1.0)


@pytest.mark.parametrize("whole", [True, False])
def test_truncated_file_is_an_adapter_file_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    path = _write(tmp_path / "t.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    monkeypatch.setattr(files, "WHOLE_READ_BYTES", 1 << 30 if whole else 0)
    with pytest.raises(AdapterFileError, match="truncated or corrupted"):
        files.read_tensors(path)
