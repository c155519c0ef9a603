"""Loaded adapters: LRU eviction with reload giving the same output, single-flight loads, the memory bound, setups
and sources."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from adapterhub.errors import ConfigError
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.serving.setups import parse_request_setup
from adapterhub.serving.sources import AdapterSource, parse_assignment, parse_source


def _engine(model_dir, adapter_dirs, **config: Any) -> ServingEngine:
    return ServingEngine.from_pretrained(
        str(model_dir), adapters={k: str(v) for k, v in adapter_dirs.items()}, config=EngineConfig(**config)
    )


def test_lru_eviction_and_reload_give_the_same_output(tiny_bert_dir, adapter_dirs):
    engine = _engine(tiny_bert_dir, adapter_dirs, max_loaded=2, max_wait_ms=1)
    texts = ["the movie was good", "a bad film"]

    async def main() -> tuple[list[Any], list[Any]]:
        await engine.start()
        first = await engine.predict(texts, adapter="cls3", logits=True)
        sizes = []
        for name in ("cls2", "reg", "tag"):  # cls3 is the least recently used: evicted by the second of these
            await engine.predict(["fun"], adapter=name)
            sizes.append(len(engine.model.adapters))
        assert "cls3" not in engine.registry.loaded and not engine.model.has_adapter("cls3")
        assert max(sizes) <= 2
        again = await engine.predict(texts, adapter="cls3", logits=True)
        await engine.shutdown()
        return first["predictions"], again["predictions"]

    first, again = asyncio.run(main())
    assert first == again  # bit-identical after eviction and reload
    assert engine.registry.load_count["cls3"] == 2
    assert engine.metrics.adapter_events["evict"] == 3  # cls3, cls2, reg
    assert list(engine.registry.loaded) == ["tag", "cls3"]


def test_evicting_a_fused_adapter_drops_the_fusion_and_reloads_it(tiny_bert_dir, adapter_dirs, fusion_dir):
    engine = ServingEngine.from_pretrained(
        str(tiny_bert_dir),
        adapters={"cls3": str(adapter_dirs["cls3"])},
        config=EngineConfig(max_loaded=2, max_wait_ms=1),
        fusions=[fusion_dir],
    )

    async def main() -> tuple[Any, Any]:
        await engine.start()
        first = await engine.predict(["a good film"], setup="Fuse(fa, fb)", logits=True)
        assert engine.fusions.describe()[0]["loaded"] and engine.model.fusions
        await engine.predict(["fun"], adapter="cls3")  # evicts fa (least recently used)
        assert not engine.fusions.describe()[0]["loaded"] and not engine.model.fusions
        again = await engine.predict(["a good film"], setup="Fuse(fa, fb)", logits=True)
        await engine.shutdown()
        return first, again

    first, again = asyncio.run(main())
    assert first["predictions"] == again["predictions"]
    assert engine.registry.load_count["fa"] == 2


def test_a_load_in_flight_is_not_duplicated(tiny_bert_dir, adapter_dirs):
    engine = _engine(tiny_bert_dir, adapter_dirs, max_loaded=2, max_wait_ms=20)

    async def main() -> list[Any]:
        await engine.start()
        results = await asyncio.gather(*(engine.predict([f"good {i}"], adapter="cls2") for i in range(8)))
        await engine.shutdown()
        return list(results)

    results = asyncio.run(main())
    assert len(results) == 8 and all(r["predictions"] for r in results)
    assert engine.registry.load_count["cls2"] == 1
    assert engine.metrics.adapter_events["load"] == 1


def test_more_adapters_than_max_loaded_wait_for_room(tiny_bert_dir, adapter_dirs):
    engine = _engine(tiny_bert_dir, adapter_dirs, max_loaded=1, max_wait_ms=5)
    names = ["cls3", "cls2", "reg", "cls3", "tag", "cls2"]

    async def main() -> list[Any]:
        await engine.start()
        seen = []

        async def watch() -> None:
            while True:
                seen.append(len(engine.model.adapters))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(engine.predict(["good"], adapter=n) for n in names))
        watcher.cancel()
        await engine.shutdown()
        assert max(seen) <= 1
        return list(results)

    results = asyncio.run(main())
    assert [r["adapter"] for r in results] == names


def test_a_setup_larger_than_max_loaded_is_refused(tiny_bert_dir, adapter_dirs):
    engine = _engine(tiny_bert_dir, adapter_dirs, max_loaded=1)

    async def main() -> None:
        await engine.start()
        try:
            await engine.predict(["x"], setup="Stack(lang, task)")
        finally:
            await engine.shutdown()

    with pytest.raises(ConfigError, match="at most 1"):
        asyncio.run(main())
    assert not engine.registry.load_count


def test_request_setups_parse_bare_and_quoted_names():
    from adapterhub import Average, Fuse, Stack

    assert parse_request_setup("rt-pfeiffer") == "rt-pfeiffer"
    assert parse_request_setup("Stack(lang, task)") == Stack("lang", "task")
    assert parse_request_setup("Stack('lang', Fuse(a, b-2, c))") == Stack("lang", Fuse("a", "b-2", "c"))
    assert parse_request_setup("Average(a, b, weights=[0.25, 0.75])") == Average(
        "a", "b", weights=[0.25, 0.75]
    )
    # a setup's repr parses back to it (Ray's multiplexed ids and replayed compositions are reprs)
    for text in ("Average(b, a)", "Stack(a, Average(b, c, weights=[0.3, 0.7]))", "Fuse(a, b)"):
        setup = parse_request_setup(text)
        assert parse_request_setup(repr(setup)) == setup
    for bad in (
        "",
        "Stack(a,",
        "Nope(a)",
        "__import__('os')",
        "Parallel(a, b)",
        "Stack(a, BatchSplit(b, c, batch_sizes=[1, 1]))",
    ):
        with pytest.raises(ConfigError):
            parse_request_setup(bad)


def test_sources(tmp_path):
    assert parse_source(str(tmp_path)) == AdapterSource("dir", str(tmp_path))
    assert parse_source("sentiment/sst-2@alice").kind == "hub"
    assert parse_source("@alice/sst-2").kind == "hub"
    assert parse_source("hf:owner/repo") == AdapterSource("hf", "owner/repo")
    assert parse_source("hf:owner/repo@v1").location == "owner/repo@v1"
    assert parse_source("./not/there").kind == "dir"
    assert parse_assignment(f"a={tmp_path}") == ("a", AdapterSource("dir", str(tmp_path)))
    for bad in ("hf:repo", "hf:a/b/c", "hf:a/b@", ""):
        with pytest.raises(ConfigError):
            parse_source(bad)
    with pytest.raises(ConfigError, match="NAME=SOURCE"):
        parse_assignment("just-a-path")


def test_engine_config_rejects_unknown_keys_naming_valid_ones():
    with pytest.raises(ConfigError, match="max_loaded"):
        EngineConfig.from_dict({"max_load": 3})
    with pytest.raises(ConfigError):
        EngineConfig(max_batch_rows=0)
    assert EngineConfig.from_dict({"max_loaded": 3}).max_loaded == 3


def test_from_pretrained_resolves_packaged_model_names(tiny_bert_dir, monkeypatch) -> None:
    """``serve-model --model smollm2`` / ``ServingEngine.from_pretrained("smollm2")``: a packaged model's name
    resolves to its folder (here a stand-in packaged name pointing at the tiny BERT) instead of going to the hub."""
    from adapterhub.data import packaged

    monkeypatch.setitem(packaged.PACKAGED_MODELS, "tinypack", lambda: Path(tiny_bert_dir))
    engine = ServingEngine.from_pretrained("tinypack")
    assert type(engine.model).__name__ == "BertModel"
