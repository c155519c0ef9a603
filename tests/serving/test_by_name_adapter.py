"""A LoRA that targets modules by name (``target_modules``, including a module that is no spec point: the LM head)
is served from its folder (``serve-model --adapter NAME=DIR``): greedy completions equal ``model.generate`` with
the adapter active, and differ from the base model's."""

from __future__ import annotations

import torch
import transformers

import adapterhub
from serving_client import complete, serve
from tiny_models import perturb

CONFIG = {"method": "lora", "r": 4, "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]}


def test_by_name_lora_folder_serves_greedy_completions_equal_to_generate(tiny_llama_loras, tmp_path):
    directory, _ = tiny_llama_loras
    model = adapterhub.init(transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval())
    model.add_adapter("byname", config=CONFIG)
    assert any(k.startswith("by_name.") for k in model._adapterhub.adapters["byname"].state_dict())
    perturb(model._adapterhub.adapters["byname"], std=0.5, seed=7)
    folder = model.save_adapter(tmp_path / "byname", "byname")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    ids = tokenizer("the movie was", return_tensors="pt").input_ids

    def greedy() -> list[int]:
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
        return out[0, ids.shape[1] :].tolist()

    base = greedy()
    model.set_active_adapters("byname")
    adapted = greedy()
    assert adapted != base

    async def body(client, engine):
        return (await complete(client, "byname")).json(), (await client.get("/v1/models")).json()

    answer, models = serve(directory, {"byname": folder}, body)
    assert "byname" in {card["id"] for card in models["data"]}
    served = tokenizer(answer["choices"][0]["text"], add_special_tokens=False).input_ids
    assert served == adapted[: len(served)] and len(served) > 0, (answer, adapted)
