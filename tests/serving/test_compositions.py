"""Compositions by name: ``--composition NAME=SETUP`` and ``POST /v1/compositions``; ``model`` names them in OpenAI
requests; they decode in the same steps as plain adapters (one BatchSplit) and give the tokens of
``model.generate`` with the setup active; blocks the engine cannot mix per row answer 400 naming the ones it can."""

from __future__ import annotations

import asyncio

import torch
import transformers

import adapterhub
from adapterhub.serving.cli import compositions_from_args
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.spec.composition import Average, BatchSplit, Split, Stack
from serving_client import AUTH, complete, serve

PROMPTS = ["the movie was", "i liked the plot"]


def test_compositions_decode_with_plain_adapters_and_equal_generate_with_the_setup(tiny_llama_loras):
    directory, dirs = tiny_llama_loras
    engine = ServingEngine.from_pretrained(
        str(directory),
        adapters={k: str(v) for k, v in dirs.items()},
        config=EngineConfig(max_wait_ms=1, max_loaded=3),
        compositions=compositions_from_args(["both=Stack(a, b)"]),
    )
    engine.add_composition("mix", "Average(a, c)")
    setups = []
    step = engine.generation.engine.step

    def recording_step():
        info = step()
        if info is not None:
            setups.append(info.setup)
        return info

    engine.generation.engine.step = recording_step

    async def main():
        await engine.start()
        together = await asyncio.gather(
            *(engine.generate(PROMPTS, adapter=m, max_new_tokens=8) for m in ("both", "mix", "a"))
        )
        await engine.shutdown()
        return [t["token_ids"] for t in together]

    together = asyncio.run(main())
    assert any(
        isinstance(s, (BatchSplit, Split)) and {Stack("a", "b"), Average("a", "c")} <= set(s.children)
        for s in setups
    )  # the compositions and the plain adapter shared a step (rows, or segments of a packed row: the default)

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = adapterhub.init(transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval())
    for path in dirs.values():
        model.load_adapter(path)
    for setup, served in zip((Stack("a", "b"), Average("a", "c"), "a"), together, strict=True):
        model.set_active_adapters(setup)
        for prompt, ids in zip(PROMPTS, served, strict=True):
            enc = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=2)
            assert ids == out[0, enc["input_ids"].shape[1] :].tolist()
    assert together[0] != together[2] and together[1] != together[2]  # the compositions change the tokens


def test_compositions_over_http(tiny_llama_loras):
    directory, dirs = tiny_llama_loras

    async def body(client, engine):
        out = {}
        post = lambda payload, **kw: client.post("/v1/compositions", json=payload, **kw)  # noqa: E731
        out["no_token"] = await post({"name": "mix", "setup": "Average(a, b)"})
        out["added"] = await post({"name": "mix", "setup": "Average(a, b)"}, headers=AUTH)
        out["fuse"] = await post({"name": "f", "setup": "Fuse(a, b)"}, headers=AUTH)
        out["unknown"] = await post({"name": "u", "setup": "Stack(a, zz)"}, headers=AUTH)
        out["taken"] = await post({"name": "a", "setup": "Stack(a, b)"}, headers=AUTH)
        out["models"] = (await client.get("/v1/models")).json()
        out["listed"] = (await client.get("/v1/adapters")).json()["compositions"]
        out["served"] = await complete(client, "mix")
        out["deleted"] = await client.delete("/v1/compositions/mix", headers=AUTH)
        out["after"] = await complete(client, "mix")
        return out

    out = serve(directory, {"a": dirs["a"], "b": dirs["b"]}, body)
    assert out["no_token"].status_code == 401
    assert out["added"].json() == {"name": "mix", "setup": repr(Average("a", "b")), "adapters": ["a", "b"]}
    fuse = out["fuse"].json()["error"]["message"]
    assert out["fuse"].status_code == 400 and "Stack, Average" in fuse and "not Fuse" in fuse
    assert out["unknown"].status_code == 400 and "'zz'" in out["unknown"].json()["error"]["message"]
    assert (
        out["taken"].status_code == 400 and "taken by an adapter" in out["taken"].json()["error"]["message"]
    )
    cards = {c["id"]: c for c in out["models"]["data"]}
    assert cards["mix"]["composition"] == repr(Average("a", "b"))
    assert out["listed"] == [{"name": "mix", "setup": repr(Average("a", "b")), "adapters": ["a", "b"]}]
    assert out["served"].status_code == 200 and out["served"].json()["model"] == "mix"
    assert out["deleted"].json() == {"deleted": "mix"}
    assert out["after"].status_code == 404 and out["after"].json()["error"]["code"] == "model_not_found"
