#!/usr/bin/env python
"""Check that the public ``adapters`` library loads a case directory and reproduces its logits.

This is the "our library -> adapters" direction. Run it inside ``.venv-adapters``::

    .venv-adapters/bin/python scripts/compat/check_adapters_can_load.py CASE_DIR [CASE_DIR ...]

A case directory holds

* ``base/``           a plain transformers base encoder (``save_pretrained``),
* ``adapter/``        an adapter in the ``adapters`` layout (``adapter_config.json`` +
                      ``pytorch_adapter.bin`` or ``adapter.safetensors``, optionally
                      ``head_config.json`` + ``pytorch_model_head.bin`` / ``model_head.safetensors``),
* ``expected.json``   ``input_ids``, ``attention_mask`` and the ``logits`` to reproduce.

``expected.json`` may also carry a ``setup`` object (written by make_adapters_fixtures.py) describing
several adapters composed with ``Stack`` or ``Fuse``; without it the single ``adapter/`` folder is used.

For every weights file the script also checks that each tensor in it landed, unchanged, in the model
and that every parameter of the loaded adapter / fusion / head came from a file: ``adapters`` itself only
logs missing or unexpected keys, so a wrong key name would otherwise pass silently with random weights.

Exit status: 0 when every case matches within ``--atol`` (default 1e-4), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import adapters
import torch
import transformers
from adapters import AutoAdapterModel, Fuse, Stack

WEIGHT_FILES = {
    "adapter": ("adapter.safetensors", "pytorch_adapter.bin"),
    "head": ("model_head.safetensors", "pytorch_model_head.bin"),
    "fusion": ("model_adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin"),
}


class CheckError(Exception):
    pass


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def read_weights(folder: Path, kind: str):
    """Return (file name, state dict) of the weights of ``kind`` in ``folder``, or (None, None)."""
    safe_name, bin_name = WEIGHT_FILES[kind]
    if (folder / safe_name).is_file():
        from safetensors.torch import load_file

        return safe_name, load_file(str(folder / safe_name))
    if (folder / bin_name).is_file():
        return bin_name, torch.load(str(folder / bin_name), map_location="cpu", weights_only=True)
    return None, None


def describe_setup(case_dir: Path, expected: dict) -> dict:
    setup = expected.get("setup")
    if setup:
        return setup
    adapter_dir = case_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise CheckError(f"{adapter_dir}/adapter_config.json not found and expected.json has no 'setup'")
    name = read_json(adapter_dir / "adapter_config.json")["name"]
    head = None
    if (adapter_dir / "head_config.json").is_file():
        head = read_json(adapter_dir / "head_config.json").get("name")
    return {"type": "single", "adapter": name, "adapter_dir": "adapter", "head": head}


def verify_file_landed(model, folder: Path, kind: str, owned_prefixes, report):
    """Every tensor of the file must equal the model's; every owned model parameter must be in the file."""
    fname, sd = read_weights(folder, kind)
    if sd is None:
        raise CheckError(f"no {kind} weights in {folder}")
    model_sd = model.state_dict()
    prefix = model.base_model_prefix + "."
    covered = set()
    for key, tensor in sd.items():
        target = key if key in model_sd else (prefix + key if prefix + key in model_sd else None)
        if target is None:
            raise CheckError(f"{folder.name}/{fname}: key {key!r} does not exist in the adapters model")
        if tuple(model_sd[target].shape) != tuple(tensor.shape):
            raise CheckError(
                f"{folder.name}/{fname}: {key!r} has shape {tuple(tensor.shape)}, "
                f"model expects {tuple(model_sd[target].shape)}"
            )
        if not torch.equal(model_sd[target].to(tensor.dtype), tensor):
            raise CheckError(f"{folder.name}/{fname}: {key!r} was not loaded into the model")
        covered.add(target)
    owned = [k for k in model_sd if any(p in k for p in owned_prefixes)]
    missing = [k for k in owned if k not in covered]
    if missing:
        raise CheckError(f"{folder.name}/{fname}: model parameters not found in the file: {missing}")
    report.append(f"{folder.name}/{fname}: {len(sd)} tensors loaded")


def verify_config_kept(model, folder: Path, name: str):
    """adapters may rewrite a config on load (e.g. "gelu" -> "gelu_new" when "version" is missing)."""
    written = read_json(folder / "adapter_config.json")["config"]
    used = model.adapters_config.get(name).to_dict()
    changed = {k: (v, used.get(k)) for k, v in written.items() if k in used and used[k] != v}
    if changed:
        raise CheckError(f"{folder.name}: adapters changed config values on load (written, used): {changed}")


def load_case(case_dir: Path, setup: dict, report):
    model = AutoAdapterModel.from_pretrained(str(case_dir / "base"))
    model.eval()
    kind = setup["type"]
    head = setup.get("head")

    if kind == "single":
        names = [setup["adapter"]]
        dirs = [setup.get("adapter_dir", "adapter")]
    else:
        names = list(setup["adapters"])
        dirs = list(setup["adapter_dirs"])

    for name, d in zip(names, dirs):
        folder = case_dir / d
        loaded = model.load_adapter(str(folder), with_head=True, use_safetensors=True)
        if loaded != name:
            raise CheckError(f"{d}: loaded as {loaded!r}, expected adapter name {name!r}")
        verify_file_landed(model, folder, "adapter", [f".adapters.{name}."], report)
        verify_config_kept(model, folder, name)

    if kind == "fuse":
        folder = case_dir / setup.get("fusion_dir", "fusion")
        model.load_adapter_fusion(str(folder), with_head=True, use_safetensors=True)
        fusion_name = setup["fusion_name"]
        verify_file_landed(model, folder, "fusion", [f".adapter_fusion_layer.{fusion_name}."], report)

    if head is None:
        raise CheckError("no prediction head was saved with the case; logits cannot be compared")
    if head not in model.heads:
        raise CheckError(
            f"head {head!r} was not loaded: adapters looks for head_config.json + pytorch_model_head.bin or"
            " model_head.safetensors and skips, with only a log line, a head it cannot use"
        )
    head_dir = case_dir / (setup.get("head_dir") or dirs[-1])
    verify_file_landed(model, head_dir, "head", [f"heads.{head}."], report)

    if kind == "single":
        active = names[0]
    elif kind == "stack":
        active = Stack(*names)
    elif kind == "fuse":
        active = Fuse(*names)
    else:
        raise CheckError(f"unknown setup type {kind!r}")
    model.set_active_adapters(active)
    model.eval()
    return model, active, head


def run_logits(model, expected, head):
    input_ids = torch.tensor(expected["input_ids"], dtype=torch.long)
    attention_mask = torch.tensor(expected["attention_mask"], dtype=torch.long)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, head=head).logits


def check_case(case_dir: Path, atol: float) -> bool:
    expected = read_json(case_dir / "expected.json")
    setup = describe_setup(case_dir, expected)
    report = []
    try:
        model, active, head = load_case(case_dir, setup, report)
        logits = run_logits(model, expected, head)
        want = torch.tensor(expected["logits"], dtype=logits.dtype)
        if want.shape != logits.shape:
            raise CheckError(f"logits shape {tuple(logits.shape)} != expected {tuple(want.shape)}")
        diff = (logits - want).abs().max().item()
        extra = ""
        if "logits_without_adapter" in expected:
            model.set_active_adapters(None)
            plain = run_logits(model, expected, head)
            model.set_active_adapters(active)
            want_plain = torch.tensor(expected["logits_without_adapter"], dtype=plain.dtype)
            diff_plain = (plain - want_plain).abs().max().item()
            extra = f", without adapter {diff_plain:.3e}"
            diff = max(diff, diff_plain)
    except CheckError as err:
        print(f"FAIL {case_dir}: {err}")
        return False
    except Exception as err:  # adapters itself refused the files
        print(f"FAIL {case_dir}: adapters raised {type(err).__name__}: {err}")
        return False
    for line in report:
        print(f"     {line}")
    ok = diff <= atol
    print(
        f"{'ok  ' if ok else 'FAIL'} {case_dir}: max abs diff {diff:.3e}{extra} (setup {active}, atol {atol:g})"
    )
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "case_dirs", nargs="+", type=Path, help="case directories (base/, adapter/, expected.json)"
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed max abs difference")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    logging.getLogger("adapters").setLevel(logging.ERROR)
    print(
        f"adapters {adapters.__version__}, transformers {transformers.__version__}, torch {torch.__version__}"
    )
    results = [check_case(d, args.atol) for d in args.case_dirs]
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
