"""One library's side of ``bench/methods/prefix_speed.py``: builds its models once, then times forward passes on
request. Runs under ``.venv`` (``--lib adapterhub``) or ``.venv-adapters`` (``--lib adapters``) and imports only
that library, torch and transformers.

Models (all ``AutoModel.from_pretrained(model_dir, attn_implementation=--attn)``, eval mode):

* ``bare``: the plain model, the library not initialised;
* ``prefix``: prefix tuning with the default MLP reparametrisation (prefix length 30, bottleneck 512, tanh),
  adapterhub ``adapterhub.init(model); add_adapter("p", config="prefix_tuning"); set_active_adapters("p")``,
  adapters ``adapters.init(model); add_adapter("p", config=PrefixTuningConfig()); set_active_adapters("p")``;
* ``flat``: the same adapter (same seed) ejected to its flat form: ``model.eject_prefix("p")`` /
  ``model.eject_prefix_tuning("p")``.

Protocol (JSON lines): first writes ``{"ready": [...], "versions": {...}, "checks": {...}}``; then reads
``{"burst": [names], "iters": N}`` and answers ``{"seconds": {name: s_per_forward}}`` (the names timed in the
order given, ``N`` forwards each, under ``torch.no_grad``); ``{"profile": [names], "rows": R}`` answers
``{"profile": {name: table}}`` (torch.profiler, one forward each after one unprofiled forward);
``{"quit": true}`` ends it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
import transformers


def base(model_dir: str, attn: str) -> torch.nn.Module:
    return transformers.AutoModel.from_pretrained(model_dir, attn_implementation=attn).eval()


def build_ours(model_dir: str, attn: str, seed: int, flat: bool) -> torch.nn.Module:
    import adapterhub

    model: Any = base(model_dir, attn)
    adapterhub.init(model)
    torch.manual_seed(seed)
    model.add_adapter("p", config="prefix_tuning")
    model.set_active_adapters("p")
    if flat:
        model.eject_prefix("p")
    return model.eval()


def build_theirs(model_dir: str, attn: str, seed: int, flat: bool) -> torch.nn.Module:
    import adapters

    model: Any = base(model_dir, attn)
    adapters.init(model)
    torch.manual_seed(seed)
    model.add_adapter("p", config=adapters.PrefixTuningConfig())
    model.set_active_adapters("p")
    if flat:
        model.eject_prefix_tuning("p")
    return model.eval()


def attention_info(model: torch.nn.Module) -> dict[str, Any]:
    """The attention implementation the config names and the class of the first self-attention module."""
    cls = None
    for name, module in model.named_modules():
        if name.endswith("attention.self"):
            cls = type(module).__name__
            break
    return {"config": getattr(model.config, "_attn_implementation", None), "self_attention_class": cls}


def versions(lib: str) -> dict[str, str]:
    found = {"torch": torch.__version__, "transformers": transformers.__version__}
    module = __import__(lib)
    found[lib] = getattr(module, "__version__", "?")
    return found


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["adapterhub", "adapters"], required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--batches", required=True, help="torch.save'd list of input dicts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dump", default=None, help="torch.save the batch-0 hidden states here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    batches: list[dict[str, torch.Tensor]] = torch.load(args.batches)
    build = build_ours if args.lib == "adapterhub" else build_theirs
    models = {
        "bare": base(args.model_dir, args.attn),
        "prefix": build(args.model_dir, args.attn, args.seed, False),
        "flat": build(args.model_dir, args.attn, args.seed, True),
    }
    total = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    # sanity: every configuration runs, outputs are finite; the prefix changes them; flat == MLP form
    with torch.no_grad():
        out = {name: m(**batches[0]).last_hidden_state for name, m in models.items()}
    checks = {
        "shape": {name: list(o.shape) for name, o in out.items()},
        "finite": {name: bool(torch.isfinite(o).all()) for name, o in out.items()},
        "max_abs_prefix_minus_bare": float((out["prefix"] - out["bare"]).abs().max()),
        "max_abs_flat_minus_prefix": float((out["flat"] - out["prefix"]).abs().max()),
        "attention": {name: attention_info(m) for name, m in models.items()},
        "parameters_total": total,
        "parameters_extra_over_bare": {name: total[name] - total["bare"] for name in models},
    }
    if args.dump:
        torch.save(out, args.dump)
    send({"ready": list(models), "versions": versions(args.lib), "checks": checks})

    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        if "burst" in request:
            seconds = {}
            with torch.no_grad():
                for name in request["burst"]:
                    model, iters = models[name], int(request["iters"])
                    started = time.perf_counter()
                    for i in range(iters):
                        model(**batches[i % len(batches)])
                    seconds[name] = (time.perf_counter() - started) / iters
            send({"seconds": seconds})
        elif "profile" in request:
            from torch.profiler import ProfilerActivity, profile

            tables = {}
            with torch.no_grad():
                for name in request["profile"]:
                    models[name](**batches[0])
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        models[name](**batches[0])
                    tables[name] = prof.key_averages().table(
                        sort_by="self_cpu_time_total", row_limit=int(request.get("rows", 14))
                    )
            send({"profile": tables})


if __name__ == "__main__":
    main()
