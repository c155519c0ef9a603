"""A server's load of a saved adapter (``sources.prepare`` on the I/O thread, ``registry._swap_in`` on the model
thread, ``registry._entry`` for its sizes and weights hash) gives exactly the saved weights and outputs, and the
same ``weights_hash`` as before the load path was made faster: the ``GOLDEN`` hashes were computed by the load
path of main before that change (commit f2a4caf), from weights set to fixed values (no random draws), and they key
the server's tokenizer cache and its ``/v1/models`` answer. Evicting and loading again gives the same again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.tiny_models import build, make_inputs

import adapterhub
from adapterhub.serving import registry, sources

CASES: dict[str, dict[str, Any]] = {
    "lora": {"method": "lora", "r": 4, "targets": ["q", "v"]},
    "lora_by_name": {"method": "lora", "r": 2, "target_modules": ["q_proj", "down_proj"], "alpha": 4},
    "ia3": {"method": "ia3"},
    "bottleneck": "pfeiffer",  # type: ignore[dict-item]
    "prefix_tuning": {"method": "prefix_tuning", "prefix_length": 3},
    "loha": {"method": "loha", "r": 2, "targets": ["q", "v"]},
}
GOLDEN: dict[str, str] = {
    "bottleneck": "sha256:67b4cb917dafdf60b7d978df09d54b47f5df0b1f97fdde637c892f36ce363bcc",
    "ia3": "sha256:b47fa6ddde88585c7ba9ae9485b3073dbf75ac6fa4fa96c244714aea016c3c2d",
    "loha": "sha256:9ecf511f8dbeae6826fce3fa5fbc483bd0e79efcba3cdadce9a7f8a56ad5bb7b",
    "lora": "sha256:bd6a86c16669c141657c1a94abe6a16902e16181778030cc02b79915c86a2c47",
    "lora_by_name": "sha256:3857250c2888c55f4b5f0a67b2279505b93116ea66beb3bbf896bc2bc7309d35",
    "prefix_tuning": "sha256:10d6b5ba9de206f30ba7f3e106c7ad46615567e4aa059051587f4ea5d6c3edf0",
}


def _fixed_values(module: torch.nn.Module) -> None:
    """Every parameter set to a fixed ramp (no random draws: the hashes do not depend on torch's generator)."""
    with torch.no_grad():
        for i, param in enumerate(module.parameters()):
            ramp = torch.linspace(-1.0, 1.0, param.numel(), dtype=torch.float64) * (0.05 + 0.01 * (i % 7))
            param.copy_(ramp.reshape(param.shape).to(param.dtype))


def _saved(tmp_path: Path, case: str) -> tuple[Path, torch.Tensor, dict[str, torch.Tensor]]:
    model = adapterhub.init(build("llama", "causal_lm"))
    model.add_adapter(case, CASES[case])
    _fixed_values(model._store.adapters[case])
    model.set_active_adapters(case)
    with torch.no_grad():
        logits = model(**make_inputs()).logits
    state = {k: v.clone() for k, v in model._store.adapters[case].state_dict().items()}
    model.save_adapter(str(tmp_path / case), case)
    return tmp_path / case, logits, state


def _serve_load(model: Any, directory: Path, name: str, victims: list[str]) -> registry.LoadedAdapter:
    source = sources.parse_source(str(directory))
    fetched = sources.fetch(source, model)
    prepared = sources.prepare(source, fetched, model, name)
    adapter, head = registry._swap_in(model, victims, source, fetched, prepared, name)
    return registry._entry(name, source, adapter, head)


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_gives_the_saved_weights_outputs_and_hash(tmp_path: Path, case: str) -> None:
    directory, logits, state = _saved(tmp_path, case)
    server = adapterhub.init(build("llama", "causal_lm"))
    first = _serve_load(server, directory, "x", [])
    loaded = server._store.adapters["x"].state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    server.set_active_adapters("x")
    with torch.no_grad():
        assert torch.equal(server(**make_inputs()).logits, logits)
    assert first.hash == GOLDEN[case]
    # the server hashes these (no head, placed when prepared) on the I/O thread before the install: the same hash
    source = sources.parse_source(str(directory))
    early = registry.describe_prepared(sources.prepare(source, sources.fetch(source, server), server, "z"))
    assert early is not None and early.hash == GOLDEN[case]
    assert (early.parameters, early.memory_bytes) == (first.parameters, first.memory_bytes)
    # evicted and loaded again (under another name, as a server reloads it): the same weights, outputs and hash
    again = _serve_load(server, directory, "y", ["x"])
    assert not server.has_adapter("x")
    assert again.hash == first.hash
    assert (again.parameters, again.memory_bytes) == (first.parameters, first.memory_bytes)
    server.set_active_adapters("y")
    with torch.no_grad():
        assert torch.equal(server(**make_inputs()).logits, logits)
