"""What cannot be exported faithfully is refused with a NotExportableError that says what to do; no file stays."""

from __future__ import annotations

import onnx
import pytest
import torch

import adapterhub
from adapterhub.errors import AdapterHubError
from adapterhub.export import ExportMismatchError, NotExportableError, export_program
from adapterhub.spec.composition import Average, BatchSplit, Parallel, Split, Stack
from tiny_models import make_inputs


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        (Parallel("a", "b"), "Export each branch on its own"),
        (Stack("a", Parallel("a", "b")), "Export each branch on its own"),
        (BatchSplit("a", "b", batch_sizes=(1, 2)), "dynamic batch"),
        (Average("a", BatchSplit("a", "b", batch_sizes=(2, 1))), "dynamic batch"),
        (Split("a", "b", split_index=4), "split index"),
    ],
)
def test_setups_that_depend_on_the_call_are_refused(setup, says, tmp_path, make_model):
    model = make_model("bert", names=("a", "b"), head=None)
    model.set_active_adapters(setup)
    path = tmp_path / "model.onnx"
    with pytest.raises(NotExportableError, match=says) as caught:
        adapterhub.export_onnx(model, path, make_inputs())
    assert isinstance(caught.value, AdapterHubError)
    assert not path.exists()
    with pytest.raises(NotExportableError, match=says):
        export_program(model, make_inputs())


def test_example_inputs_are_checked(tmp_path, make_model):
    model = make_model("distilbert", head=None)
    inputs = make_inputs()
    with pytest.raises(NotExportableError, match="at least 2 rows"):
        export_program(model, {k: v[:1] for k, v in inputs.items()})
    with pytest.raises(NotExportableError, match="token_type_ids"):  # DistilBERT takes none
        export_program(model, {**inputs, "token_type_ids": torch.zeros_like(inputs["input_ids"])})
    with pytest.raises(NotExportableError, match="tensors only"):
        export_program(model, {"input_ids": inputs["input_ids"].tolist()})
    with pytest.raises(NotExportableError, match="no tensor field"):
        export_program(model, inputs, output_names=["logits"])


def test_a_graph_that_differs_from_torch_is_removed(tmp_path, make_model):
    """Verification compares with torch; a difference above atol (here any at all) leaves no file behind."""
    model = make_model("bert")
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportMismatchError, match="differs from the model"):
        adapterhub.export_onnx(model, path, make_inputs(), atol=0.0)
    assert list(tmp_path.iterdir()) == []


def test_an_opset_the_graph_cannot_reach_is_refused(tmp_path, make_model):
    model = make_model("bert")
    with pytest.raises(NotExportableError, match="opset 14"):
        adapterhub.export_onnx(model, tmp_path / "old.onnx", make_inputs(), opset=14)
    assert not (tmp_path / "old.onnx").exists()
    result = adapterhub.export_onnx(model, tmp_path / "new.onnx", make_inputs(), opset=21)
    assert result.opset == 21
    assert {o.domain: o.version for o in onnx.load(str(result.path)).opset_import}[""] == 21
