"""ONNX export of a model with its active setup and head, checked against torch with onnxruntime.

``export_onnx(model, "out/model.onnx", example_inputs=tokenizer(texts, ...), tokenizer=tokenizer)``:

1. ``adapterhub.export.graph.export_program`` traces the model (``torch.export``, non-strict) with the setup and
   head active now, dynamic ``batch`` and ``sequence`` axes, inputs named as the example's fields and outputs
   named as the model output's fields;
2. ``torch.onnx.export`` (the dynamo exporter, ONNX opset ``opset``, default 18) translates that program; the
   setup and head are written into the file's metadata (``adapterhub.setup``, ``adapterhub.head``);
3. the tokenizer, if given, is saved beside the file (``tokenizer.save_pretrained(path.parent)``);
4. with ``verify=True`` (default) onnxruntime runs the file on the example and on a batch with one more row and
   three more positions (proving the dynamic axes), and every output must be within ``atol`` of the model's own
   output on the same inputs; otherwise the written files are removed and ``ExportMismatchError`` is raised.

Needs the ``export`` extra (``onnx``, ``onnxscript``, ``onnxruntime``).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adapterhub.errors import AdapterHubError
from adapterhub.export.graph import (
    NotExportableError,
    Traced,
    call_options,
    eval_mode,
    export_program,
    output_fields,
)

DEFAULT_OPSET = 18


class ExportMismatchError(NotExportableError):
    """The exported graph computes something else than the model (beyond the tolerance)."""


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote: the file, its interface, and the largest absolute difference from torch per
    output over the verification batches (empty when not verified)."""

    path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    opset: int
    setup_json: str
    head: str | None
    tokenizer_dir: Path | None
    max_abs_diff: Mapping[str, float]


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise AdapterHubError(
            f"ONNX export needs {', '.join(missing)}: pip install 'adapterhub[export]' (pins in constraints.txt)."
        )


def varied_batch(
    example: Mapping[str, torch.Tensor], vocab_size: int, seed: int = 1
) -> dict[str, torch.Tensor]:
    """A batch shaped unlike ``example``: one more row and three more positions (any middle axis unchanged).
    ``input_ids`` random in ``[0, vocab_size)``, ``attention_mask`` ones with the last row's final two positions
    padded, ``token_type_ids`` zeros, ``position_ids`` ``0..T-1``. Other inputs cannot be made up: error."""
    generator = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    for name, value in example.items():
        shape = (value.shape[0] + 1, *value.shape[1:-1], value.shape[-1] + 3)
        if name == "input_ids":
            new = torch.randint(0, vocab_size, shape, generator=generator)
        elif name == "attention_mask":
            new = torch.ones(shape, dtype=torch.long)
            new[-1, ..., -2:] = 0
        elif name == "token_type_ids":
            new = torch.zeros(shape, dtype=torch.long)
        elif name == "position_ids":
            new = torch.arange(shape[-1]).expand(shape).clone()
        else:
            raise NotExportableError(
                f"Cannot make a verification batch for input {name!r}; pass verify=False and check the graph "
                "with your own inputs (adapterhub.export.compare_outputs)."
            )
        batch[name] = new.to(device=value.device, dtype=value.dtype)
    return batch


def session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An onnxruntime ``InferenceSession`` for ``path`` on the CPU (``threads`` intra-op threads, default: ORT's)."""
    _require_onnx()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(ort_session: Any, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Outputs by name of an onnxruntime session on named torch ``inputs``."""
    wanted = [i.name for i in ort_session.get_inputs()]
    feed = {name: inputs[name].detach().cpu().numpy() for name in wanted}
    names = [o.name for o in ort_session.get_outputs()]
    return dict(zip(names, ort_session.run(names, feed)))


def torch_outputs(
    model: nn.Module, traced: Traced, inputs: Mapping[str, torch.Tensor]
) -> dict[str, np.ndarray]:
    """The model's own outputs (the exported names) on ``inputs``, as the graph was traced (eval, no cache)."""
    with eval_mode(model), torch.no_grad():
        fields = output_fields(model(**inputs, **traced.spec.call_options))
    return {name: fields[name].detach().float().cpu().numpy() for name in traced.spec.output_names}


def compare_outputs(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Largest absolute difference per output name (shapes must agree)."""
    diffs = {}
    for name, want in expected.items():
        have = got[name]
        if tuple(have.shape) != tuple(want.shape):
            raise ExportMismatchError(
                f"Output {name!r} of the graph has shape {tuple(have.shape)}, torch gives {tuple(want.shape)}."
            )
        diffs[name] = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)), initial=0.0))
    return diffs


def _metadata(traced: Traced) -> dict[str, str]:
    from adapterhub.version import __version__

    spec = traced.spec
    return {
        "adapterhub.version": __version__,
        "adapterhub.setup": spec.setup_json,
        "adapterhub.head": spec.head or "",
        "adapterhub.inputs": ",".join(spec.input_names),
        "adapterhub.outputs": ",".join(spec.output_names),
    }


def _translate(traced: Traced, opset: int) -> Any:
    try:
        program = torch.onnx.export(
            traced.program,
            (),
            input_names=list(traced.spec.input_names),
            output_names=list(traced.spec.output_names),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    except Exception as error:  # the exporter raises its own types; each means "no ONNX graph"
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise NotExportableError(
            f"torch.onnx could not translate the traced model to ONNX opset {opset} ({type(error).__name__}: "
            f"{first}). Try the default opset ({DEFAULT_OPSET}) or a newer one."
        ) from error
    if program is None:  # pragma: no cover - only the legacy exporter returns None
        raise NotExportableError("torch.onnx.export returned no program.")
    reached = program.model.opset_imports.get("")
    if reached != opset:  # torch's version converter leaves the graph as it was when it cannot convert it
        raise NotExportableError(
            f"The graph could not be converted to ONNX opset {opset} (it stays at {reached}: an operator it uses, "
            f"e.g. LayerNormalization, has no form in opset {opset}). Use opset {DEFAULT_OPSET} or newer."
        )
    return program


def _name_axes(onnx_program: Any, traced: Traced) -> None:
    """Call the graph's symbolic axes "batch" and "sequence" (torch names them s0, s1, ...), in every shape."""
    mapping: dict[Any, str] = {}
    inputs = {value.name: value for value in onnx_program.model.graph.inputs}
    for name, axes in traced.spec.dynamic_axes.items():
        for axis, label in axes.items():
            dim = inputs[name].shape[axis]
            if isinstance(dim, int):
                raise NotExportableError(
                    f"Axis {axis} ({label}) of input {name!r} became fixed ({dim}) in the ONNX graph."
                )
            mapping.setdefault(dim.value, label)
    onnx_program.rename_axes(mapping)


def _written_files(path: Path) -> list[Path]:
    return [p for p in (path, path.with_name(path.name + ".data")) if p.exists()]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Mapping[str, Any] | None = None,
    *,
    tokenizer: Any = None,
    opset: int | None = None,
    output_names: Sequence[str] | None = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> OnnxExport:
    """Write ``model`` with its active setup and head to the ONNX file ``path`` (see the module docstring).

    ``example_inputs``: named tensors to trace with (a tokenizer's ``BatchEncoding``; default: the tokenizer on
    two texts, or random ids); their names become the graph's inputs, with dynamic batch and sequence axes.
    ``output_names``: a subset of the model output's tensor fields (default: all, without ``loss``).
    Raises ``NotExportableError`` for what cannot be exported faithfully (``Parallel``, ``BatchSplit``, ...) and
    ``ExportMismatchError`` when verification finds a difference above ``atol`` (no file is left behind then)."""
    _require_onnx()
    opset = DEFAULT_OPSET if opset is None else int(opset)
    traced = export_program(model, example_inputs, tokenizer=tokenizer, output_names=output_names)
    onnx_program = _translate(traced, opset)
    onnx_program.model.metadata_props.update(_metadata(traced))
    _name_axes(onnx_program, traced)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(target)
    diffs: dict[str, float] = {}
    if verify:
        try:
            diffs = verify_export(model, traced, target, atol)
        except ExportMismatchError:
            for written in _written_files(target):
                written.unlink()
            raise
    tokenizer_dir = None
    if tokenizer is not None:
        tokenizer.save_pretrained(target.parent)
        tokenizer_dir = target.parent
    return OnnxExport(
        path=target,
        input_names=traced.spec.input_names,
        output_names=traced.spec.output_names,
        opset=opset,
        setup_json=traced.spec.setup_json,
        head=traced.spec.head,
        tokenizer_dir=tokenizer_dir,
        max_abs_diff=diffs,
    )


def verify_export(model: nn.Module, traced: Traced, path: Path, atol: float) -> dict[str, float]:
    """Run the ONNX file on the traced example and on ``varied_batch`` of it; the largest difference from the
    model per output. Raises ``ExportMismatchError`` above ``atol``."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
    ort_session = session(path)
    worst: dict[str, float] = {}
    for inputs in (traced.example, varied_batch(traced.example, vocab)):
        diffs = compare_outputs(torch_outputs(model, traced, inputs), run_session(ort_session, inputs))
        for name, diff in diffs.items():
            worst[name] = max(worst.get(name, 0.0), diff)
            if not diff <= atol:  # also catches NaN
                shape = {k: tuple(v.shape) for k, v in inputs.items()}
                raise ExportMismatchError(
                    f"The ONNX graph's {name!r} differs from the model's by {diff:.3g} (> {atol:g}) on inputs "
                    f"{shape}; the file was removed. The active setup {traced.spec.setup_json} does not export "
                    "faithfully; export a simpler setup."
                )
    return worst


@dataclass(frozen=True)
class SpeedComparison:
    """Median milliseconds per call of the model in torch and of the ONNX graph in onnxruntime, on the same inputs
    with the same number of CPU threads."""

    torch_ms: float
    onnxruntime_ms: float
    iterations: int
    threads: int

    @property
    def speedup(self) -> float:
        return self.torch_ms / self.onnxruntime_ms if self.onnxruntime_ms > 0 else float("inf")


def _median_ms(call: Any, iterations: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def compare_speed(
    model: nn.Module,
    exported: OnnxExport,
    inputs: Mapping[str, torch.Tensor],
    *,
    iterations: int = 10,
    warmup: int = 2,
    threads: int | None = None,
) -> SpeedComparison:
    """Time ``model`` (eval, no grad, the traced call options) and the ONNX file in onnxruntime on ``inputs``,
    each with ``threads`` CPU threads (default: torch's current setting; torch's is restored afterwards)."""
    if iterations < 1:
        raise AdapterHubError(f"iterations must be at least 1, got {iterations}.")
    before = torch.get_num_threads()
    threads = threads or before
    ort_session = session(exported.path, threads=threads)
    options = call_options(model)

    def run_torch() -> None:
        with torch.no_grad():
            model(**inputs, **options)

    torch.set_num_threads(threads)
    try:
        with eval_mode(model):
            torch_ms = _median_ms(run_torch, iterations, warmup)
    finally:
        torch.set_num_threads(before)
    ort_ms = _median_ms(lambda: run_session(ort_session, inputs), iterations, warmup)
    return SpeedComparison(torch_ms=torch_ms, onnxruntime_ms=ort_ms, iterations=iterations, threads=threads)
