"""``serve-model --ray`` on the command line: Ray is imported only with --ray, and options that cannot reach
every replica are refused with a message saying what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adapterhub.cli import main


def test_serving_without_ray_flag_never_imports_ray():
    code = (
        "import sys\n"
        "from adapterhub.cli import build_parser\n"
        "import adapterhub.serving.app, adapterhub.serving.engine\n"
        "args = build_parser().parse_args(['serve-model', '--model', 'm', '--adapter', 'a=dir'])\n"
        "assert not args.ray and args.replicas == 1\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ray_refuses_preload(tmp_path, capsys):
    pytest.importorskip(
        "ray", reason="Ray is not installed: pip install -e '.[ray]' (constraints.txt pins it)"
    )
    code = main(["serve-model", "--model", str(tmp_path), "--adapter", f"a={tmp_path}", "--ray", "--preload"])
    assert code == 2
    assert "--preload is not available with --ray" in capsys.readouterr().err


def test_ray_refuses_zero_replicas(tmp_path, capsys):
    pytest.importorskip(
        "ray", reason="Ray is not installed: pip install -e '.[ray]' (constraints.txt pins it)"
    )
    code = main(["serve-model", "--model", str(tmp_path), "--ray", "--replicas", "0"])
    assert code == 2
    assert "replicas must be a positive integer" in capsys.readouterr().err


def test_ray_refuses_a_bad_composition_before_starting_ray(tmp_path, capsys):
    pytest.importorskip(
        "ray", reason="Ray is not installed: pip install -e '.[ray]' (constraints.txt pins it)"
    )
    args = ["serve-model", "--model", str(tmp_path), "--adapter", f"a={tmp_path}", "--ray"]
    code = main([*args, "--composition", "both=Stack(a, zz)"])
    assert code == 2
    assert "names 'zz'" in capsys.readouterr().err
