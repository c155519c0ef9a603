"""The `adapters` library itself loads adapters we wrote in its layout and reproduces our logits (within 1e-4).

Runs that library in its own virtual environment (.venv-adapters, made by scripts/compat/setup_adapters_venv.sh,
which scripts/test.sh runs); skipped with a reason when that environment is absent."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import transformers

import adapterhub
from tiny_models import build, make_inputs, perturb

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS_PYTHON = ROOT / ".venv-adapters" / "bin" / "python"
CHECKER = ROOT / "scripts" / "compat" / "check_adapters_can_load.py"

pytestmark = pytest.mark.skipif(
    not ADAPTERS_PYTHON.exists(), reason="no .venv-adapters (run: bash scripts/compat/setup_adapters_venv.sh)"
)

CASES = [
    ("bert", "pfeiffer[reduction_factor=4]"),
    ("bert", "houlsby[reduction_factor=4]"),
    ("roberta", "pfeiffer[reduction_factor=4,non_linearity=gelu,leave_out=[1]]"),
    ("bert", "bapna_firat[reduction_factor=4]"),
    ("bert", "par_bn[after_attention=true,reduction_factor=4]"),
    (
        "bert",
        {
            "method": "bottleneck",
            "after_attention": True,
            "reduction_factor": {"default": 8, "0": 2},
            "scaling": 0.5,
        },
    ),
]


def write_case(directory: Path, arch: str, config) -> None:
    base = build(arch, "base")
    base.save_pretrained(directory / "base")
    model = adapterhub.init(transformers.AutoModel.from_pretrained(directory / "base").eval())
    model.add_adapter("ours", config=config)
    model.add_classification_head("ours", num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    perturb(model._adapterhub.adapters["ours"], std=0.2)
    perturb(model._adapterhub.heads["ours"], std=0.2, seed=5)
    model.set_active_adapters("ours")
    inputs = make_inputs()
    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_adapter(directory / "adapter", "ours", layout="adapters")
    (directory / "expected.json").write_text(
        json.dumps({k: v.tolist() for k, v in inputs.items()} | {"logits": logits.tolist()})
    )


def test_adapters_library_loads_what_we_write(tmp_path):
    cases = []
    for index, (arch, config) in enumerate(CASES):
        case = tmp_path / f"case{index}"
        write_case(case, arch, config)
        cases.append(str(case))
    result = subprocess.run(
        [str(ADAPTERS_PYTHON), str(CHECKER), *cases], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def write_fusion_case(directory: Path) -> None:
    """A fusion over three of our adapters with a head, saved in their layout as the checker expects it."""
    from adapterhub.spec.composition import Fuse

    base = build("bert", "base")
    base.save_pretrained(directory / "base")
    model = adapterhub.init(transformers.AutoModel.from_pretrained(directory / "base").eval())
    names = ["x", "y", "z"]
    for index, name in enumerate(names):
        model.add_adapter(name, config="pfeiffer[reduction_factor=4]")
        perturb(model._adapterhub.adapters[name], std=0.2, seed=index)
    fuse = Fuse(*names)
    model.add_adapter_fusion(fuse)
    perturb(model._adapterhub.fusions["x,y,z"], std=0.3, seed=7)
    model.add_classification_head("xyz", num_labels=3)
    perturb(model._adapterhub.heads["xyz"], std=0.2, seed=8)
    model.set_active_adapters(fuse)
    model.active_head = "xyz"
    inputs = make_inputs()
    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_adapter_fusion(directory / "fusion", fuse, with_head="xyz", layout="adapters")
    setup = {
        "type": "fuse",
        "adapters": names,
        "adapter_dirs": [f"fusion/adapters/{name}" for name in names],
        "fusion_dir": "fusion",
        "fusion_name": "x,y,z",
        "head": "xyz",
        "head_dir": "fusion",
    }
    (directory / "expected.json").write_text(
        json.dumps({k: v.tolist() for k, v in inputs.items()} | {"logits": logits.tolist(), "setup": setup})
    )


def test_adapters_library_loads_a_fusion_we_write(tmp_path):
    case = tmp_path / "fusion-case"
    write_fusion_case(case)
    result = subprocess.run(
        [str(ADAPTERS_PYTHON), str(CHECKER), str(case)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_checker_notices_a_broken_file(tmp_path):
    case = tmp_path / "broken"
    write_case(case, "bert", "pfeiffer[reduction_factor=4]")
    expected = json.loads((case / "expected.json").read_text())
    expected["logits"][0][0] += 1e-2
    (case / "expected.json").write_text(json.dumps(expected))
    result = subprocess.run(
        [str(ADAPTERS_PYTHON), str(CHECKER), str(case)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 1
    shutil.rmtree(case)
