"""Helpers shared by the golden tests against the `adapters` library's fixtures (tests/fixtures/adapters_lib).

``load_golden(case, attn)``: the fixture's tiny base model (with ``attn_implementation`` when given) under
``adapterhub.init``, its inputs and its ``expected.json``; ``hidden(model, **inputs)``: ``last_hidden_state``
without gradients; ``run_in_adapters_venv(script, *args)``: run ``script`` with that library's own interpreter
(``.venv-adapters``) and fail the test with its output unless it exits 0; ``needs_adapters_venv`` skips a test
when that venv is absent; ``check_adapters_library_loads(case, directory)``: that library loads the adapter we
wrote in ``directory`` onto the fixture's base model and reproduces its expected ``last_hidden_state``;
``check_written_in_their_layout``: the fixture's adapter written back key for key. For the fixtures with their
inputs in ``expected.json`` (vision, Whisper): ``load_inputs_case``, ``their_weights``,
``check_written_keys_and_read_back`` and ``check_library_reproduces_ours``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file

import adapterhub

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "adapters_lib"
ADAPTERS_PYTHON = ROOT / ".venv-adapters" / "bin" / "python"
needs_adapters_venv = pytest.mark.skipif(
    not ADAPTERS_PYTHON.exists(), reason="no .venv-adapters (scripts/compat/setup_adapters_venv.sh)"
)


def load_golden(case: str, attn: str | None = None) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any]]:
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    options = {} if attn is None else {"attn_implementation": attn}
    model = transformers.AutoModel.from_pretrained(FIXTURES / case / "base", **options).eval()
    inputs = {
        "input_ids": torch.tensor(expected["input_ids"]),
        "attention_mask": torch.tensor(expected["attention_mask"]),
    }
    return adapterhub.init(model), inputs, expected


def hidden(model: Any, **inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def run_in_adapters_venv(script: str, *args: str, timeout: int = 300) -> None:
    result = subprocess.run(
        [str(ADAPTERS_PYTHON), "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


THEIR_LOAD = """
import json, sys, torch, adapters, transformers
fixture, attn, directory, tolerance, kind = sys.argv[1:]
expected = json.loads(open(fixture + "/expected.json").read())
options = {"attn_implementation": attn} if attn else {}
if kind == "adapter_model":
    model = adapters.AutoAdapterModel.from_pretrained(fixture + "/base", **options).eval()
else:
    model = transformers.AutoModel.from_pretrained(fixture + "/base", **options).eval()
    adapters.init(model)
model.set_active_adapters(model.load_adapter(directory))
with torch.no_grad():
    out = model.base_model(input_ids=torch.tensor(expected["input_ids"]),
                           attention_mask=torch.tensor(expected["attention_mask"])).last_hidden_state
diff = (out - torch.tensor(expected["last_hidden_state"])).abs().max().item()
print(diff)
sys.exit(0 if diff < float(tolerance) else 1)
"""


def check_adapters_library_loads(
    case: str,
    directory: Path,
    attn: str | None = None,
    tolerance: float = 1e-5,
    adapter_model: bool = False,
    fixture: Path | None = None,
) -> None:
    """The `adapters` library (in its venv) loads the adapter in ``directory`` onto fixture ``case``'s base model
    (``attn_implementation=attn`` when given) and its ``last_hidden_state`` is the fixture's within ``tolerance``.
    ``adapter_model``: load the base into its ``AutoAdapterModel`` (whose weight names the file uses) instead of
    a plain model under ``adapters.init`` (1.3.0 loads no ReFT weights named with a model prefix into that).
    ``fixture``: a folder with ``base/`` and ``expected.json`` to use instead of fixture ``case``'s."""
    kind = "adapter_model" if adapter_model else "plain"
    run_in_adapters_venv(
        THEIR_LOAD, str(fixture or FIXTURES / case), attn or "", str(directory), str(tolerance), kind
    )


def check_written_in_their_layout(model: Any, case: str, directory: Path, expected: dict[str, Any]) -> str:
    """Load fixture ``case``'s adapter into ``model`` and save it in that library's layout into ``directory``: the
    same tensors as the fixture's ``pytorch_adapter.bin``, key for key, and the fixture's ``config``. Returns the
    name the adapter was loaded as."""
    name = model.load_adapter(FIXTURES / case / "adapter")
    model.save_adapter(directory, name, layout="adapters")
    theirs = torch.load(directory / "pytorch_adapter.bin", weights_only=True)
    original = torch.load(FIXTURES / case / "adapter" / "pytorch_adapter.bin", weights_only=True)
    assert sorted(theirs) == sorted(original)
    assert all(torch.equal(theirs[k], original[k]) for k in original)
    written = json.loads((directory / "adapter_config.json").read_text())
    assert written["config"] == expected["config"]
    return str(name)


def load_inputs_case(
    case: str, model_class: Any = None
) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any]]:
    """Fixture ``case`` whose ``expected.json`` holds its ``inputs`` (the vision and Whisper fixtures): its base
    model (``model_class``, default ``AutoModel``) under ``adapterhub.init``, the inputs and ``expected.json``."""
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    base = (model_class or transformers.AutoModel).from_pretrained(FIXTURES / case / "base").eval()
    inputs = {key: torch.tensor(value) for key, value in expected["inputs"].items()}
    return adapterhub.init(base), inputs, expected


def their_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter folder in that library's layout (``adapter.safetensors`` or
    ``pytorch_adapter.bin``)."""
    if (directory / "adapter.safetensors").exists():
        return load_file(directory / "adapter.safetensors")
    return torch.load(directory / "pytorch_adapter.bin", weights_only=True)  # type: ignore[no-any-return]


def check_written_keys_and_read_back(
    load_case: Any, outputs: Any, case: str, directory: Path, body_prefix: str = ""
) -> dict[str, Any]:
    """Fixture ``case``'s adapter (``load_case(case)``), saved in that library's layout (no head) into
    ``directory``, has the fixture's tensors key for key (``body_prefix``: the ``<model>.`` our names carry for
    their ``*AdapterModel``, dropped before comparing) and reads back into a fresh model with the same
    ``outputs(model, inputs)``, to the bit. Returns the written ``config``."""
    model, inputs, _ = load_case(case)
    name = model.load_adapter(FIXTURES / case / "adapter", set_active=True)
    ours = outputs(model, inputs)
    model.save_adapter(directory, name, layout="adapters", with_head=False)
    written = {k.removeprefix(body_prefix): v for k, v in their_weights(directory).items()}
    original = their_weights(FIXTURES / case / "adapter")
    assert sorted(written) == sorted(original)  # their module paths, key for key
    for key, tensor in original.items():
        assert torch.equal(written[key], tensor), key
    fresh, _, _ = load_case(case)
    fresh.load_adapter(directory, set_active=True)
    for key, value in outputs(fresh, inputs).items():
        assert torch.equal(value, ours[key]), key
    return json.loads((directory / "adapter_config.json").read_text())["config"]  # type: ignore[no-any-return]


THEIR_OUTPUTS_LOAD = """
import json, sys, torch, adapters, transformers
fixture, directory, outputs, model_class, attn, tolerance = sys.argv[1:]
inputs = {k: torch.tensor(v) for k, v in json.loads(open(fixture + "/expected.json").read())["inputs"].items()}
options = {"attn_implementation": attn} if attn else {}
model = getattr(transformers, model_class).from_pretrained(fixture + "/base", **options).eval()
adapters.init(model)
model.set_active_adapters(model.load_adapter(directory))
with torch.no_grad():
    out = model(**inputs)
ours = json.loads(open(outputs).read())
diff = max((getattr(out, k) - torch.tensor(v)).abs().max().item() for k, v in ours.items())
print(diff)
sys.exit(0 if diff < float(tolerance) else 1)
"""


def check_library_reproduces_ours(
    model: Any,
    name: str,
    case: str,
    directory: Path,
    ours: dict[str, torch.Tensor],
    model_class: str,
    attn: str | None = None,
    tolerance: float = 1e-5,
) -> None:
    """That library (in its venv) loads adapter ``name`` of ``model``, written in its layout (no head) into
    ``directory/adapter``, onto fixture ``case``'s base model (``transformers.<model_class>``, with
    ``attn_implementation=attn`` when given) and reproduces ``ours`` (``{output name: tensor}``) on the fixture's
    inputs within ``tolerance``."""
    model.save_adapter(directory / "adapter", name, layout="adapters", with_head=False)
    (directory / "ours.json").write_text(json.dumps({k: v.tolist() for k, v in ours.items()}))
    run_in_adapters_venv(
        THEIR_OUTPUTS_LOAD,
        str(FIXTURES / case),
        str(directory / "adapter"),
        str(directory / "ours.json"),
        model_class,
        attn or "",
        str(tolerance),
    )
