"""``adapterhub export onnx``: a saved tiny model, its tokenizer and saved adapters to a checked, timed ONNX file."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

import adapterhub
from adapterhub.cli import main
from tiny_models import build, perturb

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]


@pytest.fixture
def saved(tmp_path):
    """A tiny BERT with a WordPiece tokenizer of its 99-word vocabulary, and two adapters with heads."""
    model_dir = tmp_path / "model"
    build("bert").save_pretrained(model_dir)
    tokenizer = transformers.BertTokenizer(vocab={word: i for i, word in enumerate(WORDS)})
    tokenizer.save_pretrained(model_dir)
    model = adapterhub.init(build("bert"))
    dirs = {}
    for i, name in enumerate(("lang", "task")):
        model.add_adapter(name, config="pfeiffer")
        perturb(model._adapterhub.adapters[name], seed=10 + i)
        model.add_classification_head(name, num_labels=3)
        perturb(model._adapterhub.heads[name], std=0.5, seed=20 + i)
        dirs[name] = model.save_adapter(tmp_path / name, name)
    return model_dir, dirs


def _reference(model_dir, dirs, setup):
    model = adapterhub.init(transformers.AutoModel.from_pretrained(model_dir).eval())
    for directory in dirs.values():
        model.load_adapter(directory)
    model.set_active_adapters(setup)
    return model


def test_export_stack_prints_speeds_and_matches_torch(saved, tmp_path, capsys, run_onnx, read_graph):
    model_dir, dirs = saved
    output = tmp_path / "deploy" / "model.onnx"
    code = main(
        ["export", "onnx", "--model", str(model_dir), "--adapter", str(dirs["lang"]), "--adapter",
         str(dirs["task"]), "--setup", 'Stack("lang", "task")', "--output", str(output), "--iterations", "3"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    speed = re.search(r"torch (\d+\.\d+) ms, onnxruntime (\d+\.\d+) ms", printed)
    assert speed and float(speed.group(1)) > 0 and float(speed.group(2)) > 0, printed
    assert "inputs input_ids, token_type_ids, attention_mask -> outputs logits" in printed

    inputs, outputs, _ = read_graph(output)
    assert list(inputs) == ["input_ids", "token_type_ids", "attention_mask"]
    assert outputs == {"logits": ["batch", 3]}
    tokenizer = transformers.AutoTokenizer.from_pretrained(output.parent)  # saved beside the file
    texts = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11", "w12", "w13 w14 w15", "w16 w17 w18 w19"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    reference = _reference(model_dir, dirs, adapterhub.Stack("lang", "task"))
    with torch.no_grad():
        expected = reference(**batch).logits.numpy()
    assert np.abs(run_onnx(output, batch)["logits"] - expected).max() <= 1e-4


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "say what to export with --setup"),
        (["--setup", 'Parallel("lang", "task")'], "Export each branch on its own"),
    ],
)
def test_refusals_are_one_line_errors(saved, tmp_path, capsys, extra, says):
    model_dir, dirs = saved
    output = tmp_path / "model.onnx"
    code = main(
        ["export", "onnx", "--model", str(model_dir), "--adapter", str(dirs["lang"]), "--adapter",
         str(dirs["task"]), "--output", str(output), *extra]
    )  # fmt: skip
    assert code == 2
    assert says in capsys.readouterr().err
    assert not output.exists()


def test_command_module_imports_no_torch():
    """The command module and its package load without torch (run with adapterhub/__init__ itself skipped, which
    imports the model library)."""
    code = "import sys, adapterhub.export.cli as c; print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))"
    probe = f"import sys; sys.modules['adapterhub'] = type(sys)('adapterhub'); sys.modules['adapterhub'].__path__ = {list(adapterhub.__path__)!r}; {code}"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
