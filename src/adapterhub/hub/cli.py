"""Command line of the hub: ``adapterhub hub serve|create-user|...`` and ``adapterhub push|search|info|pull|login``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from adapterhub.hub import hf_cli
from adapterhub.hub.errors import HubError, HubValidationError

SEED_FILE = Path(__file__).with_name("seed.json")


def register(subparsers: Any) -> None:
    hub = subparsers.add_parser(
        "hub",
        help="run and administer a hub server",
        description="Run and administer an adapter hub (registry server + website).",
    )
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="HUB_COMMAND")
    hub.set_defaults(handler=lambda args: (hub.print_help(), 0)[1])

    def server_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--db",
            help="database URL: sqlite:///PATH (default under $ADAPTERHUB_HOME/hub) or "
            "postgresql://USER@HOST:PORT/DB; env ADAPTERHUB_HUB_DB",
        )
        p.add_argument(
            "--storage",
            help="blob storage: a folder (default $ADAPTERHUB_HOME/hub/storage) or "
            "s3://BUCKET/PREFIX; env ADAPTERHUB_HUB_STORAGE",
        )
        p.add_argument(
            "--s3-endpoint", help="S3 endpoint URL (env ADAPTERHUB_S3_ENDPOINT_URL or AWS_ENDPOINT_URL)"
        )

    p = hub_sub.add_parser("serve", help="start the hub server (API + website)")
    server_opts(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8765)")
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest accepted upload (default 64)")
    p.add_argument("--seed", action="store_true", help="add the default tasks, subtasks and languages first")
    p.add_argument(
        "--weights-check",
        choices=("full", "header"),
        help="how uploads are checked: full (every weight against the config; needs torch) or header (the "
        "files' JSON and safetensors headers; no torch). Default: full where torch is installed; env "
        "ADAPTERHUB_HUB_WEIGHTS_CHECK",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(handler=_serve)

    p = hub_sub.add_parser("create-user", help="create a user and print an API token for it")
    server_opts(p)
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="hub administrator (manages tasks, users)")
    p.add_argument("--display-name", default="")
    p.set_defaults(handler=_create_user)

    p = hub_sub.add_parser("create-token", help="create another API token for a user and print it")
    server_opts(p)
    p.add_argument("user")
    p.add_argument("--name", default="cli")
    p.set_defaults(handler=_create_token)

    p = hub_sub.add_parser("create-org", help="create an organisation, optionally with members")
    server_opts(p)
    p.add_argument("name")
    p.add_argument("--member", action="append", default=[], help="user to add (repeatable)")
    p.add_argument(
        "--admin-member", action="append", default=[], help="user to add as org admin (repeatable)"
    )
    p.set_defaults(handler=_create_org)

    p = hub_sub.add_parser("create-task", help="add a task, or a subtask with --subtask")
    server_opts(p)
    p.add_argument("task")
    p.add_argument("--subtask", help="add this subtask (data set or domain) to the task")
    p.add_argument("--display-name", default="")
    p.add_argument("--description", default="")
    p.add_argument("--metric", default="accuracy", help="subtask metric that ranks adapters")
    p.add_argument("--direction", choices=["max", "min"], default="max")
    p.set_defaults(handler=_create_task)

    p = hub_sub.add_parser("create-language", help="add a language (for language adapters)")
    server_opts(p)
    p.add_argument("code")
    p.add_argument("--display-name", default="")
    p.set_defaults(handler=_create_language)

    p = hub_sub.add_parser("seed", help="add the default tasks, subtasks and languages (idempotent)")
    server_opts(p)
    p.add_argument("--file", type=Path, default=SEED_FILE, help="JSON taxonomy (default: the packaged one)")
    p.set_defaults(handler=_seed)

    def client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--hub", dest="hub_url", help="hub URL (default $ADAPTERHUB_HUB_URL or http://127.0.0.1:8765)"
        )

    def model_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model-type", help="the model's config.model_type (e.g. bert)")
        p.add_argument("--model-name", default="", help="the model's name_or_path")
        p.add_argument("--hidden-size", type=int, help="the model's hidden size")
        p.add_argument("--config", help="adapter config preset or hash to pick")

    p = subparsers.add_parser("push", help="publish an adapter directory to the hub")
    p.add_argument("directory", type=Path)
    client_opts(p)
    p.add_argument("--owner", help="user or organisation to publish under (default: you)")
    p.add_argument("--name", help="adapter name on the hub (default: the name in adapter_config.json)")
    p.add_argument("--type", dest="adapter_type", choices=["task", "language"], default="task")
    p.add_argument("--task")
    p.add_argument("--subtask")
    p.add_argument("--language")
    p.add_argument("--license", default="")
    p.add_argument("--description", default="")
    p.add_argument("--citation", default="")
    p.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE", help="a score (repeatable)")
    p.add_argument("--config-name", default="", help="the config's preset name, for display")
    p.add_argument("--token", help="API token (default: the stored one)")
    hf_cli.add_push_flags(p)
    p.set_defaults(handler=_push)

    p = subparsers.add_parser("search", help="search the hub's adapters")
    p.add_argument("query", nargs="?", default=None)
    client_opts(p)
    for flag in ("task", "subtask", "model-type", "model-name", "config", "owner", "language"):
        p.add_argument(f"--{flag}")
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--sort", choices=["score", "recent", "downloads", "name"], default="score")
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.set_defaults(handler=_search)

    p = subparsers.add_parser("info", help="show an adapter's card, versions and checksums")
    p.add_argument("identifier")
    client_opts(p)
    model_opts(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_info)

    p = subparsers.add_parser("pull", help="download an adapter into the cache and print its folder")
    p.add_argument("identifier")
    client_opts(p)
    model_opts(p)
    hf_cli.add_pull_flags(p)
    p.set_defaults(handler=_pull)

    p = subparsers.add_parser("login", help="store an API token for a hub (file readable only by you)")
    p.add_argument("token", nargs="?", help="the token (read from stdin when omitted)")
    client_opts(p)
    p.set_defaults(handler=_login)


# ------------------------------------------------------------------------------------------------ server


def _settings(args: argparse.Namespace) -> Any:
    try:
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401

        from adapterhub.hub.server.settings import HubSettings
    except ImportError as error:
        raise HubError(
            f"The hub server needs its extra packages ({error.name} is missing): "
            "pip install fastapi uvicorn sqlalchemy alembic python-multipart"
        ) from None
    return HubSettings(
        db_url=args.db or "",
        storage_url=args.storage or "",
        s3_endpoint_url=getattr(args, "s3_endpoint", None),
        weights_check=getattr(args, "weights_check", None) or "",
    )


def _open(args: argparse.Namespace) -> Any:
    from adapterhub.hub.server.app import open_hub

    return open_hub(_settings(args))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from adapterhub.hub.server.settings import DEFAULT_PORT

    settings = _settings(args)
    if args.max_upload_mb is not None:
        settings.max_upload_bytes = int(args.max_upload_mb * 1024 * 1024)
    from adapterhub.hub.server.app import create_app, open_hub

    hub = open_hub(settings)  # migrate once, before workers start
    if args.seed:
        _seed_hub(hub, SEED_FILE)
    port = args.port or DEFAULT_PORT
    print(
        f"adapterhub: serving the hub on http://{args.host}:{port} (database {_redact(settings.db_url)}, "
        f"storage {settings.storage_url}, weights check {settings.weights_check})",
        flush=True,
    )
    if args.workers > 1:
        os.environ["ADAPTERHUB_HUB_DB"] = settings.db_url
        os.environ["ADAPTERHUB_HUB_STORAGE"] = settings.storage_url
        if settings.s3_endpoint_url:
            os.environ["ADAPTERHUB_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
        os.environ["ADAPTERHUB_HUB_MAX_UPLOAD_BYTES"] = str(settings.max_upload_bytes)
        os.environ["ADAPTERHUB_HUB_WEIGHTS_CHECK"] = settings.weights_check
        uvicorn.run(
            "adapterhub.hub.server.app:app_from_env",
            factory=True,
            host=args.host,
            port=port,
            workers=args.workers,
            log_level=args.log_level,
        )
    else:
        uvicorn.run(create_app(hub=hub), host=args.host, port=port, log_level=args.log_level)
    return 0


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


def _create_user(args: argparse.Namespace) -> int:
    from adapterhub.hub.server import service

    hub = _open(args)
    with hub.sessions() as s, s.begin():
        user = service.create_owner(s, args.name, display_name=args.display_name, is_admin=args.admin)
        token = service.create_token(s, user, "initial")
    print(token)
    print(
        f"created user @{args.name}{' (admin)' if args.admin else ''}; the line above is its API token "
        "(shown once): adapterhub login TOKEN",
        file=sys.stderr,
    )
    return 0


def _create_token(args: argparse.Namespace) -> int:
    from adapterhub.hub.server import service

    hub = _open(args)
    with hub.sessions() as s, s.begin():
        user = service.require_owner(s, args.user)
        token = service.create_token(s, user, args.name)
    print(token)
    return 0


def _create_org(args: argparse.Namespace) -> int:
    from adapterhub.hub.server import service

    hub = _open(args)
    with hub.sessions() as s, s.begin():
        org = service.create_owner(s, args.name, kind="org")
        for name in args.member:
            service.add_member(s, org, service.require_owner(s, name), "member")
        for name in args.admin_member:
            service.add_member(s, org, service.require_owner(s, name), "admin")
    print(f"created organisation @{args.name}")
    return 0


def _create_task(args: argparse.Namespace) -> int:
    from adapterhub.hub.server import service

    hub = _open(args)
    with hub.sessions() as s, s.begin():
        if args.subtask:
            if service.get_task(s, args.task) is None:
                service.create_task(s, args.task)
            service.create_subtask(
                s, args.task, args.subtask, args.display_name, args.description, args.metric, args.direction
            )
            print(f"created subtask {args.task}/{args.subtask}")
        else:
            service.create_task(s, args.task, args.display_name, args.description)
            print(f"created task {args.task}")
    return 0


def _create_language(args: argparse.Namespace) -> int:
    from adapterhub.hub.server import service

    hub = _open(args)
    with hub.sessions() as s, s.begin():
        service.create_language(s, args.code, args.display_name)
    print(f"created language {args.code}")
    return 0


def _seed_hub(hub: Any, path: Path) -> dict[str, int]:
    from adapterhub.hub.server import service

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise HubValidationError(f"Cannot read the taxonomy file {path}: {error}") from None
    with hub.sessions() as s, s.begin():
        return service.seed_taxonomy(s, data)


def _seed(args: argparse.Namespace) -> int:
    added = _seed_hub(_open(args), args.file)
    print(f"added {added['tasks']} tasks, {added['subtasks']} subtasks, {added['languages']} languages")
    return 0


# ------------------------------------------------------------------------------------------------ client


def _push(args: argparse.Namespace) -> int:
    from adapterhub.hub import client

    metrics: dict[str, float] = {}
    for item in args.metric:
        key, eq, value = item.partition("=")
        try:
            if not eq:
                raise ValueError
            metrics[key.strip()] = float(value)
        except ValueError:
            raise HubValidationError(
                f"--metric {item!r}: use NAME=NUMBER, e.g. --metric accuracy=0.91"
            ) from None
    if args.hf:
        return hf_cli.push_hf(args, metrics)
    owner = args.owner
    if owner is None:
        owner = client.whoami(token=args.token, hub_url=args.hub_url)["name"]
    result = client.push_adapter_dir(
        args.directory,
        owner=owner,
        name=args.name,
        task=args.task,
        subtask=args.subtask,
        adapter_type=args.adapter_type,
        language=args.language,
        license=args.license,
        description=args.description,
        citation=args.citation,
        metrics=metrics,
        config_name=args.config_name,
        token=args.token,
        hub_url=args.hub_url,
    )
    state = "published" if result.get("created", True) else "unchanged (same content as)"
    print(f"{state} {result['id']}:{result['version']}  sha256 {result['sha256']}  {result['size']} bytes")
    return 0


def _search(args: argparse.Namespace) -> int:
    from adapterhub.hub import client

    result = client.search(
        args.query,
        hub_url=args.hub_url,
        task=args.task,
        subtask=args.subtask,
        model_type=args.model_type,
        model_name=args.model_name,
        hidden_size=args.hidden_size,
        config=args.config,
        owner=args.owner,
        language=args.language,
        sort=args.sort,
        page=args.page,
    )
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for item in result["items"]:
        where = item["short_form"] or ""
        score = (
            f"{item['metric']}={item['metrics'].get(item['metric'])}"
            if item.get("metric") in item["metrics"]
            else ""
        )
        print(
            f"{item['id']:<40} {where:<36} {item['model_type']}/{item['model_name'] or '-'} "
            f"d={item['hidden_size']} {item['config_name'] or item['config_hash'][:8]} v{item['latest_version']} "
            f"{score}".rstrip()
        )
    print(f"{result['total']} adapter(s); page {result['page']}")
    return 0


def _model_args(args: argparse.Namespace) -> dict[str, Any]:
    if (args.model_type is None) != (args.hidden_size is None):
        raise HubValidationError("--model-type and --hidden-size go together.")
    return {
        "model_type": args.model_type,
        "model_name": args.model_name or "",
        "hidden_size": args.hidden_size,
    }


def _info(args: argparse.Namespace) -> int:
    from adapterhub.hub import client

    detail = client.info(args.identifier, hub_url=args.hub_url, config=args.config, **_model_args(args))
    if args.json:
        print(json.dumps(detail, indent=1))
        return 0
    print(f"{detail['id']}  ({detail.get('short_form') or detail['adapter_type']})")
    for key in (
        "adapter_type",
        "task",
        "subtask",
        "language",
        "model_type",
        "model_name",
        "hidden_size",
        "method",
        "config_name",
        "config_hash",
        "head_type",
        "license",
        "downloads",
    ):
        if detail.get(key) not in (None, ""):
            print(f"  {key:<13} {detail[key]}")
    if detail.get("metrics"):
        print("  metrics       " + ", ".join(f"{k}={v}" for k, v in detail["metrics"].items()))
    if detail.get("id2label"):
        print("  labels        " + ", ".join(f"{k}:{v}" for k, v in detail["id2label"].items()))
    if detail.get("description"):
        print("  description   " + detail["description"])
    print("  versions:")
    for v in detail["versions"]:
        print(
            f"    {v['version']:>3}  {v['created_at'][:19]}  sha256 {v['sha256']}  {v['size']} bytes  "
            f"{v['downloads']} downloads"
        )
    if detail.get("citation"):
        print("  citation:\n    " + detail["citation"].replace("\n", "\n    "))
    return 0


def _pull(args: argparse.Namespace) -> int:
    from adapterhub.hub import client
    from adapterhub.hub.identifiers import parse_identifier

    if args.hf:
        return hf_cli.pull_hf(args)
    model = _model_args(args)
    if model["model_type"] is not None:
        path = client.resolve_to_local_dir(args.identifier, hub_url=args.hub_url, config=args.config, **model)
    else:
        ident = parse_identifier(args.identifier)
        if not ident.is_direct:
            raise HubValidationError(
                f"{args.identifier!r} depends on the model: pass --model-type and "
                "--hidden-size (and --model-name), or use the '@owner/name' form."
            )
        assert ident.owner is not None and ident.name is not None
        path = client.download_adapter(ident.owner, ident.name, ident.version, hub_url=args.hub_url)
    print(path)
    return 0


def _login(args: argparse.Namespace) -> int:
    from adapterhub.hub import client

    token = args.token or sys.stdin.readline().strip()
    path = client.login(token, hub_url=args.hub_url)
    try:
        who = client.whoami(token=token, hub_url=args.hub_url)
        print(f"logged in as @{who['name']}; token stored in {path}")
    except HubError as error:
        print(f"token stored in {path}, but the hub did not accept it yet: {error}", file=sys.stderr)
    return 0
