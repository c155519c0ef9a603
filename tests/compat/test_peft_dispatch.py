"""The peft layout's routing table (``adapterhub.io.peft_dispatch.FORMATS``): every peft type we read round-trips
through its own entry, and an unknown peft type or method is refused with the list of every entry."""

from __future__ import annotations

import json

import pytest

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.io.peft_dispatch import FORMATS, read_peft_dir
from tiny_models import build


def test_every_method_has_one_entry():
    methods = [m for fmt in FORMATS.values() for m in fmt.methods]
    assert len(methods) == len(set(methods))  # a method written as two peft types would be ambiguous
    assert set(methods) >= {"lora", "dora", "ia3", "loha", "lokr", "vera", "oft", "boft", "ln_tuning"}


def test_unknown_peft_type_lists_every_entry(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "HRA", "r": 4}))
    with pytest.raises(ConfigError, match="'HRA'") as error:
        read_peft_dir(tmp_path, None)
    for peft_type, fmt in FORMATS.items():
        assert f"{fmt.label} ({peft_type!r})" in str(error.value)


def test_unknown_method_lists_every_entry(tmp_path):
    model = adapterhub.init(build("bert"))
    model.add_adapter("b", "seq_bn")
    with pytest.raises(ConfigError, match="'b' is a bottleneck adapter") as error:
        model.save_adapter(tmp_path / "b", "b", layout="peft")
    for peft_type, fmt in FORMATS.items():
        assert repr(peft_type) in str(error.value)
        assert all(method in str(error.value) for method in fmt.methods)
    assert not (tmp_path / "b" / "adapter_config.json").exists()
