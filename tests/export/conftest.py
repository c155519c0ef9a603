"""Fixtures of the export tests: adapted tiny models and an independent onnxruntime check of an exported file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import adapterhub
from adapterhub.export.graph import call_options
from tiny_models import build, perturb

pytest.importorskip(
    "onnxruntime", reason="the export extra is not installed: pip install 'adapterhub[export]'"
)
onnx = pytest.importorskip(
    "onnx", reason="the export extra is not installed: pip install 'adapterhub[export]'"
)
import onnxruntime  # noqa: E402

TOLERANCE = 1e-4


def adapted_model(
    arch: str, config: str = "pfeiffer", names: Sequence[str] = ("a",), head: str | None = "a", seed: int = 0
) -> Any:
    """A tiny random ``arch`` base model with adapters ``names`` (weights far from identity) and a 3-way
    classification head ``head``; the first adapter is active."""
    model: Any = adapterhub.init(build(arch, seed=seed))
    for i, name in enumerate(names):
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], std=0.3, seed=10 + i)
    if head is not None:
        model.add_classification_head(head, num_labels=3)
        perturb(model._adapterhub.heads[head], std=0.5, seed=20)
    model.set_active_adapters(names[0])
    return model


def other_batches(vocab: int = 99) -> list[dict[str, torch.Tensor]]:
    """Batches shaped unlike tiny_models.make_inputs() (3 x 7): 5 x 11 with padding, and 1 x 4."""
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(3, vocab, (5, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[4, 6:] = 0
    single = torch.randint(3, vocab, (1, 4), generator=generator)
    return [
        {"input_ids": ids, "attention_mask": mask},
        {"input_ids": single, "attention_mask": torch.ones_like(single)},
    ]


def onnx_run(path: Path, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def torch_run(model: Any, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        output = model(**inputs, **call_options(model))
    return {k: v.numpy() for k, v in output.items() if isinstance(v, torch.Tensor) and k != "loss"}


def graph_io(path: Path) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, str]]:
    """Input and output names -> their dims (dim_param or dim_value), and the model's metadata."""
    proto = onnx.load(str(path))

    def dims(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return (
        {i.name: dims(i) for i in proto.graph.input},
        {o.name: dims(o) for o in proto.graph.output},
        {p.key: p.value for p in proto.metadata_props},
    )


def assert_matches_torch(
    model: Any, path: Path, batches: list[dict[str, torch.Tensor]] | None = None
) -> float:
    """onnxruntime's outputs of ``path`` equal the model's within TOLERANCE on batches of other shapes than the
    export example; returns the largest difference."""
    worst = 0.0
    model.eval()
    for inputs in batches or other_batches(model.config.vocab_size):
        expected = torch_run(model, inputs)
        got = onnx_run(path, inputs)
        for name, value in got.items():
            assert value.shape == expected[name].shape, name
            diff = float(np.abs(value - expected[name]).max())
            assert diff <= TOLERANCE, (name, diff)
            worst = max(worst, diff)
    return worst


@pytest.fixture
def matches_torch() -> Callable[..., float]:
    return assert_matches_torch


@pytest.fixture
def make_model() -> Callable[..., Any]:
    return adapted_model


@pytest.fixture
def read_graph() -> Callable[..., Any]:
    return graph_io


@pytest.fixture
def run_onnx() -> Callable[..., Any]:
    return onnx_run
