"""``adapterhub merge`` on a tiny model saved with save_pretrained."""

import pytest
import torch

import adapterhub
from adapterhub.cli import main
from tiny_models import build, make_inputs, perturb


@pytest.fixture
def saved(tmp_path):
    base = build("bert")
    base.save_pretrained(tmp_path / "model")
    model = adapterhub.init(build("bert"))
    for i, name in enumerate("ab"):
        model.add_adapter(name, config="lora[r=4,targets=[q,v]]")
        perturb(model._adapterhub.adapters[name], seed=i)
        model.save_adapter(tmp_path / name, name)
    return tmp_path, model


@pytest.mark.parametrize("layout", ["adapterhub", "peft"])
def test_merge_cli_matches_average_adapter(saved, layout, capsys):
    tmp_path, model = saved
    code = main(
        ["merge", "--model", str(tmp_path / "model"), "--adapter", str(tmp_path / "a"), "--adapter",
         str(tmp_path / "b"), "--weights", "0.5", "0.5", "--combine", "linear", "--output", str(tmp_path / "m"),
         "--layout", layout]
    )  # fmt: skip
    assert code == 0 and str(tmp_path / "m") in capsys.readouterr().out
    model.average_adapter("m", ["a", "b"], [0.5, 0.5], set_active=True)
    fresh = adapterhub.init(build("bert"))
    fresh.load_adapter(tmp_path / "m", load_as="m", set_active=True)
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(**inputs).last_hidden_state, model(**inputs).last_hidden_state, atol=1e-5, rtol=0
        )


def test_merge_cli_reports_errors(saved, capsys):
    tmp_path, _ = saved
    code = main(
        ["merge", "--model", str(tmp_path / "model"), "--adapter", str(tmp_path / "a"), "--adapter",
         str(tmp_path / "b"), "--weights", "1", "--output", str(tmp_path / "m")]
    )  # fmt: skip
    assert code == 2 and "--weights has 1 values for 2" in capsys.readouterr().err
    code = main(
        ["merge", "--model", str(tmp_path / "model"), "--adapter", str(tmp_path / "a"), "--adapter",
         str(tmp_path / "b"), "--combine", "ties", "--output", str(tmp_path / "m")]
    )  # fmt: skip
    assert code == 2 and "needs density" in capsys.readouterr().err
