"""``GenerationEngine(packed=None)``: packed steps wherever they are exact and supported (``gen_packed.packed_mode``).
On an SDPA Llama every step packs and gives the row engine's tokens; a step holding a prefix-tuning sequence (its
keys join the whole row's attention) runs one row per sequence, logged once with the adapter's reason, and the
steps after it pack again, the tokens unchanged; an eager model runs rows, logged once when the engine is built;
``packed=True`` still refuses prefix tuning at submit. ``serve-model`` packs by default (``EngineConfig.packed``
None), ``--no-packed`` runs rows, ``--packed`` packs every step."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.serving import GenerationEngine
from tiny_models import build, perturb


def make(attention: str) -> Any:
    llama = build("llama", "causal_lm", seed=0)
    llama.set_attn_implementation(attention)
    adapterhub.init(llama)
    for i, (name, method, std) in enumerate(
        [("lora", "lora", 0.2), ("p5", "prefix_tuning[prefix_length=5]", 0.5)]
    ):
        llama.add_adapter(name, method)
        perturb(llama._store.adapters[name], std=std, seed=30 + i)
    return llama


@pytest.fixture(scope="module")
def sdpa() -> Any:
    return make("sdpa")


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in (5, 8, 3, 6)]


def staggered(
    engine: GenerationEngine, prompts: list[list[int]], adapters: list[Any], new: list[int]
) -> tuple[list[list[int]], list[bool]]:
    """Request ``i`` joins at step ``i``; the tokens of each and whether each step ran packed."""
    handles: list[Any] = []
    packed: list[bool] = []
    while len(handles) < len(prompts) or any(h.status != "finished" for h in handles):
        if len(handles) < len(prompts):
            i = len(handles)
            handles.append(engine.submit(prompts[i], adapter=adapters[i], max_new_tokens=new[i]))
        info = engine.step()
        assert info is not None
        packed.append(info.packed)
    return [h.result() for h in handles], packed


def test_auto_packs_every_step_on_sdpa_with_the_row_engines_tokens(sdpa, prompts, caplog):
    adapters: list[Any] = ["lora", None, "lora", None]
    new = [6, 6, 6, 6]
    with caplog.at_level(logging.WARNING, logger="adapterhub.serving"):
        auto = GenerationEngine(sdpa, max_num_seqs=4, stop_ids=[], packed=None)
        tokens, packed = staggered(auto, prompts, adapters, new)
    assert auto.packed and all(packed) and not caplog.records
    rows, row_steps = staggered(
        GenerationEngine(sdpa, max_num_seqs=4, stop_ids=[], packed=False), prompts, adapters, new
    )
    assert not any(row_steps)
    assert tokens == rows


def test_a_step_with_prefix_tuning_runs_rows_logged_once_and_the_next_steps_pack(sdpa, prompts, caplog):
    adapters: list[Any] = ["lora", "p5", None, "lora"]
    new = [7, 2, 7, 7]  # the prefix-tuning sequence joins at step 1 and ends after step 2
    with caplog.at_level(logging.WARNING, logger="adapterhub.serving"):
        tokens, packed = staggered(
            GenerationEngine(sdpa, max_num_seqs=4, stop_ids=[], packed=None), prompts, adapters, new
        )
    assert packed[0] and not packed[1] and not packed[2] and all(packed[3:])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "one padded row per sequence" in lines[0], lines
    assert "'p5' (prefix_tuning)" in lines[0] and "prefix keys and values are prepended" in lines[0]
    rows, _ = staggered(
        GenerationEngine(sdpa, max_num_seqs=4, stop_ids=[], packed=False), prompts, adapters, new
    )
    assert tokens == rows
    with pytest.raises(ConfigError, match=r"'p5' \(prefix_tuning\)"):  # asked for explicitly: refused
        GenerationEngine(sdpa, packed=True).submit(prompts[0], adapter="p5")


def test_auto_on_an_eager_model_runs_rows_and_says_why_once(prompts, caplog):
    eager = make("eager")
    with caplog.at_level(logging.WARNING, logger="adapterhub.serving"):
        engine = GenerationEngine(eager, max_num_seqs=4, stop_ids=[], packed=None)
        _, packed = staggered(engine, prompts[:2], ["lora", None], [4, 4])
    assert not engine.packed and not any(packed)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "eager" in lines[0] and "set_attn_implementation('sdpa')" in lines[0], lines
    assert GenerationEngine(eager, packed=True).packed  # asked for: the mask path (exact on eager)
    with pytest.raises(ConfigError, match="packed must be True, False or None"):
        GenerationEngine(eager, packed="auto")  # type: ignore[arg-type]


def test_serve_model_packs_by_default_and_no_packed_runs_rows():
    from adapterhub.cli import build_parser
    from adapterhub.serving.cli import config_from_args
    from adapterhub.serving.engine import EngineConfig

    argv = ["serve-model", "--model", "some/model"]
    assert config_from_args(build_parser().parse_args(argv))[1].packed is None
    assert config_from_args(build_parser().parse_args([*argv, "--packed"]))[1].packed is True
    assert config_from_args(build_parser().parse_args([*argv, "--no-packed"]))[1].packed is False
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--packed", "--no-packed"])
    assert EngineConfig().packed is None
    assert GenerationEngine(
        make("sdpa")
    ).auto_packed  # the engine's default: packed where exact and supported
    assert EngineConfig.from_dict({"packed": False}).packed is False
    with pytest.raises(ConfigError, match="packed must be True, False or None"):
        EngineConfig(packed=1)  # type: ignore[arg-type]
