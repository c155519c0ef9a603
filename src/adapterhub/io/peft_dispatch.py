"""peft's layout, every method: one table from ``peft_type`` (the key of ``adapter_config.json``) to the reader and
writer of that type, and the two entry points that route through it.

``read_peft_dir`` looks the file's ``peft_type`` up in ``FORMATS``; ``write_peft_dir`` looks the record's
``method`` up in the methods of each entry. A type or method that no entry names is refused with the list of every
entry. Adding a peft type is one entry here and its module (reader + writer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.io.files import read_json
from adapterhub.io.peft_adalora import read_adalora, write_peft_adalora
from adapterhub.io.peft_common import CONFIG_FILE
from adapterhub.io.peft_ia3 import write_peft_ia3
from adapterhub.io.peft_layout import (
    Reader,
    Writer,
    read_ia3,
    read_lora,
    read_lycoris,
    read_vera,
    single_stack,
    write_lora,
)
from adapterhub.io.peft_ln_tuning import read_peft_ln_tuning, write_peft_ln_tuning
from adapterhub.io.peft_lycoris import write_peft_lycoris
from adapterhub.io.peft_oft import read_peft_oft, write_peft_oft
from adapterhub.io.peft_vera import write_peft_vera
from adapterhub.runtime.records import AdapterRecord, ModelInfo
from adapterhub.spec.architectures import ArchitectureSpec


@dataclass(frozen=True)
class PeftFormat:
    """One peft type: its name in messages, our methods written as it, and how it is read and written."""

    label: str
    methods: tuple[str, ...]
    read: Reader
    write: Writer


FORMATS: dict[str, PeftFormat] = {
    "LORA": PeftFormat("LoRA (with DoRA)", ("lora", "dora"), read_lora, write_lora),
    "IA3": PeftFormat("(IA)³", ("ia3",), read_ia3, single_stack(write_peft_ia3)),
    "LOHA": PeftFormat("LoHa", ("loha",), read_lycoris, single_stack(write_peft_lycoris)),
    "LOKR": PeftFormat("LoKr", ("lokr",), read_lycoris, single_stack(write_peft_lycoris)),
    "VERA": PeftFormat("VeRA", ("vera",), read_vera, single_stack(write_peft_vera)),
    "OFT": PeftFormat("OFT", ("oft",), read_peft_oft, write_peft_oft),
    "BOFT": PeftFormat("BOFT", ("boft",), read_peft_oft, write_peft_oft),
    "LN_TUNING": PeftFormat("LN tuning", ("ln_tuning",), read_peft_ln_tuning, write_peft_ln_tuning),
    "ADALORA": PeftFormat("AdaLoRA", ("adalora",), read_adalora, single_stack(write_peft_adalora)),
}


def supported_types() -> str:
    """Every entry of ``FORMATS`` for messages: ``LoRA (with DoRA) ('LORA'), (IA)³ ('IA3'), ...``."""
    return ", ".join(f"{fmt.label} ({peft_type!r})" for peft_type, fmt in FORMATS.items())


def read_peft_dir(
    directory: str | os.PathLike[str],
    spec: ArchitectureSpec | None,
    *,
    model: ModelInfo | None = None,
    with_head: bool = True,
) -> AdapterRecord:
    """A peft directory -> our record, read by the ``FORMATS`` entry of its ``peft_type``."""
    directory = Path(directory)
    meta = read_json(directory / CONFIG_FILE)
    fmt = FORMATS.get(str(meta.get("peft_type")))
    if fmt is None:
        raise ConfigError(
            f"{directory} holds a peft {meta.get('peft_type')!r} adapter (option peft_type); adapterhub reads peft "
            f"adapters of these types only: {supported_types()}."
        )
    return fmt.read(directory, meta, spec, model, with_head)


def write_peft_dir(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write ``record`` in peft's layout (``peft.PeftModel.from_pretrained(base, directory)`` computes what we do),
    by the ``FORMATS`` entry whose methods hold its ``method``."""
    method = record.config.get("method")
    fmt = next((fmt for fmt in FORMATS.values() if method in fmt.methods), None)
    if fmt is None:
        methods = ", ".join(m for entry in FORMATS.values() for m in entry.methods)
        raise ConfigError(
            f"layout='peft' writes {methods} adapters (peft types: {supported_types()}); {record.name!r} is a "
            f"{method} adapter. Use layout='adapterhub'."
        )
    return fmt.write(record, directory, spec, model)
