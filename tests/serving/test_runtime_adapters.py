"""Adapters at run time: vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter (token, answers, OpenAI-shaped
errors, /v1/models), and identity by weights (a name reloaded with other weights answers with the new weights, and
its hash changes)."""

from __future__ import annotations

from serving_client import AUTH, complete, serve


def test_load_and_unload_lora_adapter_as_vllm(tiny_llama_loras):
    directory, dirs = tiny_llama_loras

    async def body(client, engine):
        out = {}
        out["no_token"] = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(dirs["a"])}
        )
        out["before"] = await complete(client, "x")
        out["load"] = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(dirs["a"])}, headers=AUTH
        )
        out["again"] = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(dirs["b"])}, headers=AUTH
        )
        out["missing_field"] = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "y"}, headers=AUTH
        )
        out["bad_path"] = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "y", "lora_path": "/no/such/dir"}, headers=AUTH
        )
        out["models"] = (await client.get("/v1/models")).json()
        out["used"] = await complete(client, "x")
        out["unload"] = await client.post("/v1/unload_lora_adapter", json={"lora_name": "x"}, headers=AUTH)
        out["unload_again"] = await client.post(
            "/v1/unload_lora_adapter", json={"lora_name": "x"}, headers=AUTH
        )
        out["after"] = await complete(client, "x")
        out["models_after"] = (await client.get("/v1/models")).json()
        out["known"] = sorted(engine.registry.sources)
        return out

    out = serve(directory, {}, body)
    assert (
        out["no_token"].status_code == 401
        and out["no_token"].json()["error"]["type"] == "authentication_error"
    )
    assert out["before"].status_code == 404 and out["before"].json()["error"]["code"] == "model_not_found"
    assert out["load"].status_code == 200
    assert out["load"].text == "Success: LoRA adapter 'x' added successfully."
    assert out["load"].headers["content-type"].startswith("text/plain")
    assert (
        out["again"].status_code == 400 and "already been loaded" in out["again"].json()["error"]["message"]
    )
    assert out["missing_field"].status_code == 400
    assert out["missing_field"].json()["error"]["param"] == "lora_path"
    bad = out["bad_path"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lora_path"
    assert "/no/such/dir" in bad.json()["error"]["message"]
    cards = {c["id"]: c for c in out["models"]["data"]}
    assert set(cards) == {out["models"]["data"][0]["id"], "x"}  # the failed "y" left nothing behind
    assert cards["x"]["root"] == str(dirs["a"]) and cards["x"]["hash"].startswith("sha256:")
    assert out["used"].status_code == 200 and out["used"].json()["model"] == "x"
    assert out["unload"].text == "Success: LoRA adapter 'x' removed successfully."
    assert out["unload_again"].status_code == 404
    assert out["unload_again"].json()["error"]["message"] == "The lora adapter 'x' cannot be found."
    assert out["after"].status_code == 404 and out["after"].json()["error"]["code"] == "model_not_found"
    assert [c["id"] for c in out["models_after"]["data"]] == [out["models"]["data"][0]["id"]]
    assert out["known"] == []


def test_a_name_reloaded_with_other_weights_answers_with_the_new_weights(tiny_llama_loras):
    directory, dirs = tiny_llama_loras

    async def body(client, engine):
        def load(name, which, inplace=False):
            payload = {"lora_name": name, "lora_path": str(dirs[which]), "load_inplace": inplace}
            return client.post("/v1/load_lora_adapter", json=payload, headers=AUTH)

        await load("x", "a")
        first = (await complete(client, "x")).json()["choices"][0]["text"]
        hash_a = (await client.get("/v1/models/x")).json()["hash"]
        await client.post("/v1/unload_lora_adapter", json={"lora_name": "x"}, headers=AUTH)
        await load("x", "b")
        second = (await complete(client, "x")).json()["choices"][0]["text"]
        hash_b = (await client.get("/v1/models/x")).json()["hash"]
        assert (await load("x", "a", inplace=True)).status_code == 200  # replaced in place: A's weights again
        third = (await complete(client, "x")).json()["choices"][0]["text"]
        hash_again = (await client.get("/v1/models/x")).json()["hash"]
        listed = (await client.get("/v1/adapters")).json()["adapters"]
        own = {n: (await complete(client, n)).json()["choices"][0]["text"] for n in ("a", "b")}
        own_hashes = {n: engine.registry.hashes[n] for n in ("a", "b")}
        return first, second, third, hash_a, hash_b, hash_again, listed, own, own_hashes

    first, second, third, hash_a, hash_b, hash_again, listed, own, own_hashes = serve(
        directory, {"a": dirs["a"], "b": dirs["b"]}, body
    )
    assert own["a"] != own["b"]  # the two adapters answer differently, so the checks below can fail
    assert first == own["a"] and second == own["b"] and third == own["a"]
    assert hash_a == own_hashes["a"] == hash_again and hash_b == own_hashes["b"] and hash_a != hash_b
    assert {e["name"]: e["hash"] for e in listed}["x"] == hash_a
