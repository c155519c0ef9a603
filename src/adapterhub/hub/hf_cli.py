"""``adapterhub pull --hf REPO`` and ``adapterhub push DIR --hf REPO``: the CLI's Hugging Face Hub side (the flags
are registered by :mod:`adapterhub.hub.cli`, which hands over to these handlers)."""

from __future__ import annotations

import argparse


def add_pull_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf", action="store_true", help="IDENTIFIER is a Hugging Face Hub repo 'owner/repo'")
    p.add_argument("--revision", help="with --hf: branch, tag or commit (default: the default branch)")
    p.add_argument("--endpoint", help="with --hf: the Hub's URL (default $HF_ENDPOINT or huggingface.co)")
    p.add_argument("--hf-token", help="with --hf: Hub token (default $HF_TOKEN or the stored one)")


def add_push_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf", metavar="REPO", help="upload to this Hugging Face Hub repo 'owner/repo' instead")
    p.add_argument("--endpoint", help="with --hf: the Hub's URL (default $HF_ENDPOINT or huggingface.co)")
    p.add_argument(
        "--model-type", help="with --hf: the model type, for a peft folder (its files do not say it)"
    )


def pull_hf(args: argparse.Namespace) -> int:
    from adapterhub.hub.hf import download_adapter_repo

    print(
        download_adapter_repo(
            args.identifier, revision=args.revision, endpoint=args.endpoint, token=args.hf_token
        )
    )
    return 0


def push_hf(args: argparse.Namespace, metrics: dict[str, float]) -> int:
    """Upload the folder as it is (its own layout) with a model card made from its files and the flags."""
    from adapterhub.hub.hf import push_adapter_dir_to_hf
    from adapterhub.hub.hf_card import adapter_card
    from adapterhub.io.manifest import inspect_adapter_dir

    manifest = inspect_adapter_dir(args.directory, model_type=args.model_type)
    readme = adapter_card(
        name=args.name or manifest.name,
        layout=manifest.layout,
        method=manifest.method,
        base_model=manifest.model_name,
        task=args.task,
        subtask=args.subtask,
        language=args.language,
        adapter_type=args.adapter_type,
        metrics=metrics,
        license=args.license,
        model_type=manifest.model_type,
        description=args.description,
        repo_id=args.hf,
    )
    result = push_adapter_dir_to_hf(
        args.directory, args.hf, readme=readme, endpoint=args.endpoint, token=args.token
    )
    print(f"uploaded {result['repo_id']}  commit {result['commit']}  {result['url']}")
    return 0
