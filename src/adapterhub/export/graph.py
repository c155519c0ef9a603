"""What an export captures: the model with its active setup and head, as a graph of named tensors.

``export_program(model, example_inputs)`` traces ``model`` with ``torch.export.export(..., strict=False)``: the
model's Python (our forward hooks, the store's setup lookup, the per-call state in ``adapterhub.runtime.callstate``, the
``"adapterhub_sdpa"`` / ``"adapterhub_eager"`` attention function) runs once on symbolic tensors, so whatever setup
is active in that thread at that moment (``set_active_adapters`` or an enclosing ``with model.adapter_setup(...)``)
and the active head are baked into the graph; merged LoRA weights are simply part of the base weights. The graph
takes the example's tensors by name (``input_ids``, ``attention_mask``, ``token_type_ids``, ...) with a dynamic
batch axis (0) and sequence axis (last; a multiple-choice input ``(batch, choices, sequence)`` keeps its choices
axis fixed) and returns the tensor fields of the model's output (``logits``; ``last_hidden_state``,
``pooler_output``), never the loss or a key/value cache (``use_cache=False``).

Refused with ``NotExportableError``: setups whose meaning depends on the call (``Parallel``: one output per branch
on a replicated batch; ``BatchSplit``: fixed row counts per child, which contradict a dynamic batch axis;
``Split``: a different computation for sequences no longer than the split index), and anything ``torch.export``
cannot trace with dynamic axes (its reason is included).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapterhub.errors import AdapterHubError
from adapterhub.runtime.store import STORE_ATTR, AdapterStore
from adapterhub.spec.composition import BatchSplit, Parallel, Setup, Split, blocks_with_parents, setup_to_json

# texts the example batch is made of when only a tokenizer is given (two rows of different lengths: padding)
EXAMPLE_TEXTS = ("Adapters make fine-tuning cheap.", "An exported graph runs without Python or torch at all.")
BATCH, SEQUENCE = "batch", "sequence"


class NotExportableError(AdapterHubError, ValueError):
    """The model, its active setup or the example inputs cannot be exported faithfully; the message says what
    to do instead."""


@dataclass(frozen=True)
class ExportSpec:
    """The interface of an exported graph: ``input_names`` in call order, ``output_names`` in output order,
    ``dynamic_axes`` (input name -> {axis: "batch" | "sequence"}), ``call_options`` passed to every model call
    (``use_cache=False`` where the model takes it) and the active setup as JSON (``"null"`` for none)."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]]
    call_options: Mapping[str, Any]
    setup_json: str
    head: str | None


class NamedIO(nn.Module):
    """``forward(*tensors)`` in ``spec.input_names`` order -> the tuple of ``spec.output_names`` fields of
    ``model(**named_tensors, **call_options)``."""

    def __init__(self, model: nn.Module, spec: ExportSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.spec.input_names, tensors))
        output = self.model(**named, **self.spec.call_options)
        return tuple(output_fields(output)[name] for name in self.spec.output_names)


def _store(model: nn.Module) -> AdapterStore | None:
    store = getattr(model, "_modules", {}).get(STORE_ATTR)
    return store if isinstance(store, AdapterStore) else None


def check_setup_exportable(setup: Setup | None) -> None:
    """Raise ``NotExportableError`` for a setup a fixed graph with dynamic axes cannot compute."""
    blocks = [block for block, _ in blocks_with_parents(setup)]
    if setup is not None and not isinstance(setup, str):
        blocks.insert(0, setup)
    for block in blocks:
        if isinstance(block, Parallel):
            raise NotExportableError(
                f"{block!r} runs every branch on a copy of the batch and returns one output per branch "
                "(ParallelOutput), which one graph with one set of outputs cannot represent. Export each branch "
                "on its own: model.set_active_adapters(<branch setup>), then export it."
            )
        if isinstance(block, BatchSplit):
            raise NotExportableError(
                f"{block!r} sends a fixed number of rows through each child, which contradicts the dynamic batch "
                "axis of an exported graph (a batch of another size would be split wrongly). Export one graph "
                "per child setup (model.set_active_adapters(child)) and send each request to its graph."
            )
        if isinstance(block, Split):
            raise NotExportableError(
                f"{block!r} computes something else for sequences no longer than its split index (the index is "
                "clamped to the length, and a child whose part is empty is skipped), and one graph with a dynamic "
                "sequence axis holds only one of these computations. Run this setup in torch, or export the "
                "setup of one part (model.set_active_adapters(child))."
            )


def _accepted_inputs(model: nn.Module) -> set[str]:
    parameters = inspect.signature(model.forward).parameters
    return {
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def example_batch(
    model: nn.Module, example_inputs: Mapping[str, Any] | None, tokenizer: Any = None
) -> dict[str, torch.Tensor]:
    """The named input tensors to trace with: ``example_inputs`` (a tokenizer's ``BatchEncoding`` or a dict of
    tensors), else the tokenizer applied to two example texts, else two rows of 8 random token ids with an
    attention mask. Each must be a tensor the model's ``forward`` takes by name, with at least 2 rows and 2
    positions (``torch.export`` treats axes of size 0 or 1 as fixed)."""
    if example_inputs is None:
        if tokenizer is not None:
            example_inputs = tokenizer(list(EXAMPLE_TEXTS), padding=True, return_tensors="pt")
        else:
            vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
            generator = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab, (2, 8), generator=generator)  # (batch, sequence)
            example_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    accepted = _accepted_inputs(model)
    batch: dict[str, torch.Tensor] = {}
    device = _device(model)
    for name, value in dict(example_inputs).items():
        if not isinstance(value, torch.Tensor):
            raise NotExportableError(
                f"Example input {name!r} is a {type(value).__name__}; pass tensors only (return_tensors='pt')."
            )
        if name not in accepted:
            raise NotExportableError(
                f"{type(model).__name__}.forward takes no input named {name!r} (it takes "
                f"{', '.join(sorted(n for n in accepted if n.endswith(('_ids', '_mask'))))}). Drop it from the "
                "example inputs, or use the tokenizer made for this model."
            )
        if value.dim() < 2 or value.shape[0] < 2 or value.shape[-1] < 2:
            raise NotExportableError(
                f"Example input {name!r} has shape {tuple(value.shape)}; give at least 2 rows and 2 positions "
                "(torch.export fixes axes of size 0 or 1, so the graph would not take other batch sizes)."
            )
        batch[name] = value.to(device)
    if not batch:
        raise NotExportableError("The example inputs are empty; pass at least input_ids.")
    return batch


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def dynamic_axes(batch: Mapping[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    """Input name -> {0: "batch", last axis: "sequence"} (a middle axis, e.g. choices, stays fixed)."""
    return {name: {0: BATCH, value.dim() - 1: SEQUENCE} for name, value in batch.items()}


def output_fields(output: Any) -> dict[str, torch.Tensor]:
    """The tensor fields of a model output by name, without ``loss``: a ``ModelOutput``'s own names, a tuple's
    elements as ``output_<i>``."""
    if isinstance(output, Mapping):
        items = list(output.items())
    elif isinstance(output, (tuple, list)):
        items = [(f"output_{i}", value) for i, value in enumerate(output)]
    else:
        items = [("output_0", output)]
    return {name: value for name, value in items if isinstance(value, torch.Tensor) and name != "loss"}


def call_options(model: nn.Module) -> dict[str, Any]:
    """Keywords every traced call gets: no key/value cache (a graph output we do not name)."""
    return {"use_cache": False} if "use_cache" in _accepted_inputs(model) else {}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout in the graph) inside the block; its mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def export_spec(
    model: nn.Module, batch: Mapping[str, torch.Tensor], output_names: Sequence[str] | None = None
) -> ExportSpec:
    """Check the active setup, run the model once on ``batch`` and name what it returns. Call in eval mode."""
    store = _store(model)
    setup = store.current_setup() if store is not None else None
    check_setup_exportable(setup)
    options = call_options(model)
    with torch.no_grad():
        fields = output_fields(model(**batch, **options))
    if output_names is None:
        names = tuple(fields)
    else:
        names = tuple(output_names)
        unknown = [name for name in names if name not in fields]
        if unknown or not names:
            raise NotExportableError(
                f"The model's output has no tensor field(s) {unknown}; it has {', '.join(fields)}."
            )
    return ExportSpec(
        input_names=tuple(batch),
        output_names=names,
        dynamic_axes=dynamic_axes(batch),
        call_options=options,
        setup_json=setup_to_json(setup),
        head=store.active_head() if store is not None else None,
    )


def _torch_dynamic_shapes(spec: ExportSpec) -> tuple[dict[int, Any], ...]:
    # DYNAMIC: torch.export may bound an axis (sequence <= max_position_embeddings) but must not fix it
    return tuple(
        {axis: torch.export.Dim.DYNAMIC for axis in spec.dynamic_axes[name]} for name in spec.input_names
    )


def trace(module: NamedIO, batch: Mapping[str, torch.Tensor]) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``module`` (non-strict) with dynamic batch and sequence axes."""
    spec = module.spec
    try:
        return torch.export.export(
            module,
            tuple(batch[name] for name in spec.input_names),
            dynamic_shapes=(_torch_dynamic_shapes(spec),),  # forward(*tensors): one varargs entry
            strict=False,
        )
    except Exception as error:  # torch.export raises many types; each means "this graph cannot be made"
        if isinstance(error, AdapterHubError):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise NotExportableError(
            f"torch.export could not trace this model with dynamic batch and sequence axes "
            f"({type(error).__name__}: {first}). Something in the model or in the active setup "
            f"{spec.setup_json} depends on the values or sizes of the inputs in a way one graph cannot hold; "
            "export a setup without that method or block (the chained exception has torch's details)."
        ) from error


@dataclass(frozen=True)
class Traced:
    """An ``ExportedProgram`` with the interface it was traced for and the example it was traced on."""

    program: torch.export.ExportedProgram
    spec: ExportSpec
    example: Mapping[str, torch.Tensor]

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs by name of the exported program on named ``inputs``."""
        values = self.program.module()(*(inputs[name] for name in self.spec.input_names))
        return dict(zip(self.spec.output_names, values))


def export_program(
    model: nn.Module,
    example_inputs: Mapping[str, Any] | None = None,
    *,
    tokenizer: Any = None,
    output_names: Sequence[str] | None = None,
) -> Traced:
    """``torch.export`` of ``model`` with its active setup and head (see the module docstring): the program takes
    the example's tensors in order and returns ``Traced.spec.output_names``; ``Traced.run(inputs)`` calls it by
    name. The model is traced in eval mode and left in the mode it was in."""
    with eval_mode(model):
        batch = example_batch(model, example_inputs, tokenizer)
        spec = export_spec(model, batch, output_names)
        program = trace(NamedIO(model, spec), batch)
    return Traced(program=program, spec=spec, example=batch)
