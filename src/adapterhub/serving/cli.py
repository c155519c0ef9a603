"""``adapterhub serve-model``: serve one base model with many adapters over HTTP (see docs/serving.md).

::

    adapterhub serve-model --model M --adapter NAME=SOURCE ... [--fusion DIR ...] [--composition NAME=SETUP ...]
        [--max-loaded N] [--max-batch-rows 64]
        [--max-wait-ms 5] [--max-queue-rows 4096] [--host 127.0.0.1] [--port 8080] [--token TOKEN]
        [--hub-url URL] [--device cpu] [--preload] [--no-gc-freeze]

SOURCE is a directory, a hub identifier (``sentiment/sst-2@alice``) or ``hf:owner/repo``. Adapters load on first
use (``--preload`` loads them at start). No torch import at module level: ``adapterhub --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve-model",
        help="serve one base model with many adapters over HTTP (mixed-adapter batches)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="base model directory or name (also the tokenizer)")
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="an adapter to serve (repeatable): directory, hub identifier or hf:owner/repo",
    )
    parser.add_argument(
        "--fusion",
        action="append",
        default=[],
        metavar="DIR",
        help="a saved AdapterFusion (repeatable): requests may then use Fuse(a, b, ...) of its adapters",
    )
    parser.add_argument(
        "--composition",
        action="append",
        default=[],
        metavar="NAME=SETUP",
        help="serve a composition under NAME (repeatable), e.g. both='Stack(a, b)' or mix='Average(a, b)'",
    )
    parser.add_argument("--max-loaded", type=int, default=8, help="adapters in memory at most (default 8)")
    parser.add_argument("--max-batch-rows", type=int, default=64, help="rows per forward pass (default 64)")
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="wait for more requests before a pass (default 5)"
    )
    parser.add_argument(
        "--max-queue-rows", type=int, default=4096, help="rows waiting before answering 429 (default 4096)"
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="tokens per row (default: the model's limit)"
    )
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        default=16,
        help="sequences the generation engine decodes together (default 16)",
    )
    parser.add_argument(
        "--max-batch-tokens", type=int, default=2048, help="new tokens per generation step (default 2048)"
    )
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        help="prefill long prompts this many tokens per step while others decode (default: whole prompts)",
    )
    parser.add_argument(
        "--max-cache-tokens",
        type=int,
        default=None,
        help="KV cache tokens of all sequences (default: max-num-seqs x the model's context)",
    )
    parser.add_argument(
        "--preempt",
        action="store_true",
        help="hold the cache used (blocks) and preempt the newest sequence when it is full (recomputed later)",
    )
    parser.add_argument(
        "--cache-block", type=int, default=16, help="cache tokens per block with --preempt (default 16)"
    )
    packing = parser.add_mutually_exclusive_group()
    packing.add_argument(
        "--packed",
        dest="packed",
        action="store_const",
        const=True,
        default=None,
        help="run every generation step as one row of all sequences' tokens (per-token adapters; refuses prefix "
        "tuning; default: packed wherever exact and supported, i.e. SDPA models, one row per sequence for steps "
        "holding prefix tuning and on other models, each reason logged once)",
    )
    packing.add_argument(
        "--no-packed",
        dest="packed",
        action="store_const",
        const=False,
        help="run every generation step as one padded row per sequence",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", default=None, help="bearer token needed to add or delete adapters")
    parser.add_argument("--hub-url", default=None, help="hub for hub identifiers (default: the client's)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--preload", action="store_true", help="load the adapters at start, not on first use")
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the objects alive after start-up to the cyclic garbage collector (default: gc.freeze() them)",
    )
    # Ray Serve scale-out (adapterhub.serving.ray_serve; Ray is imported only with --ray).
    ray = parser.add_argument_group(
        "Ray Serve", "run the engine as a Ray Serve deployment (pip install '.[ray]')"
    )
    ray.add_argument(
        "--ray", action="store_true", help="serve with Ray Serve, adapters as multiplexed models"
    )
    ray.add_argument("--replicas", type=int, default=1, help="engine replicas (default 1)")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs per replica (default 1)")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="Ray GPUs per replica (default 0)")
    ray.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local one)")
    parser.set_defaults(handler=run_serve_model)


def config_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The adapters (name -> source) and the ``EngineConfig`` the arguments describe."""
    from adapterhub.serving.engine import EngineConfig
    from adapterhub.serving.sources import parse_assignment

    adapters = dict(parse_assignment(text) for text in args.adapter)
    config = EngineConfig(
        max_loaded=args.max_loaded,
        max_batch_rows=args.max_batch_rows,
        max_wait_ms=args.max_wait_ms,
        max_queue_rows=args.max_queue_rows,
        max_length=args.max_length,
        hub_url=args.hub_url,
        max_num_seqs=args.max_num_seqs,
        max_batch_tokens=args.max_batch_tokens,
        prefill_chunk=args.prefill_chunk,
        max_cache_tokens=args.max_cache_tokens,
        preempt=args.preempt,
        cache_block=args.cache_block,
        packed=args.packed,
        gc_freeze=not args.no_gc_freeze,
    )
    return adapters, config


def engine_from_args(args: argparse.Namespace) -> Any:
    """The ``ServingEngine`` the arguments describe (model loaded, adapters registered, nothing loaded yet)."""
    from adapterhub.serving.engine import ServingEngine

    adapters, config = config_from_args(args)
    return ServingEngine.from_pretrained(
        args.model, adapters=adapters, config=config, fusions=args.fusion, device=args.device,
        compositions=compositions_from_args(args.composition),
    )  # fmt: skip


def compositions_from_args(assignments: list[str]) -> dict[str, str]:
    """``NAME=SETUP`` options -> ``{name: setup text}``."""
    from adapterhub.errors import ConfigError

    out = {}
    for text in assignments:
        name, sep, setup = text.partition("=")
        if not sep or not name.strip() or not setup.strip():
            raise ConfigError(f"--composition takes NAME=SETUP (e.g. both='Stack(a, b)'), got {text!r}.")
        out[name.strip()] = setup.strip()
    return out


def run_serve_model(args: argparse.Namespace) -> int:
    if args.ray:
        from adapterhub.serving.ray_serve import serve_with_ray

        adapters, config = config_from_args(args)
        return serve_with_ray(
            args.model, adapters, config, replicas=args.replicas, replica_cpus=args.replica_cpus,
            replica_gpus=args.replica_gpus, device=args.device, host=args.host, port=args.port,
            address=args.ray_address, fusions=args.fusion, token=args.token, preload=args.preload,
            compositions=compositions_from_args(args.composition),
        )  # fmt: skip
    import uvicorn

    from adapterhub.serving.app import create_app

    engine = engine_from_args(args)
    app = create_app(engine, token=args.token, preload=args.preload)
    print(
        f"serving {args.model} with {len(engine.registry.sources)} adapter(s) at http://{args.host}:{args.port}"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
