"""``--quantize`` on ``adapterhub train / evaluate / compare``: a tiny Llama trained QLoRA-style through the CLI
entry point (in process): finite loss, only the adapter's weights change, the base stays 4-bit."""

from __future__ import annotations

import json

import pytest
import torch

import adapterhub.training.modeling as modeling
from adapterhub.cli import main
from adapterhub.runtime.quantized import dequantized_weight
from quant_models import load_quantized, save_tiny_llama
from tiny_chat import chat_tokenizer

from .conftest import VOCAB

pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install -e '.[quant]')")

FLAGS = ["--batch-size", "8", "--max-length", "16", "--no-progress", "--pooling", "mean", "--seed", "1"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    chat_tokenizer(VOCAB).save_pretrained(directory)
    return directory


def test_train_and_evaluate_with_quantize_nf4(tmp_path, llama_dir, sentiment_dir, monkeypatch, capsys):
    loaded = []
    original = modeling.model_and_tokenizer

    def keep(args, causal_lm):
        model, tokenizer = original(args, causal_lm)
        loaded.append(model)
        return model, tokenizer

    monkeypatch.setattr(modeling, "model_and_tokenizer", keep)
    out = tmp_path / "run"
    argv = ["train", "--data", sentiment_dir, "--model", llama_dir, "--quantize", "nf4"]
    argv += ["--method", "adapter:lora[r=4]", "--max-steps", "3", "--lr", "1e-2", "--output-dir", out, *FLAGS]
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["steps"] == 3 and all(
        torch.isfinite(torch.tensor(h["train_loss"])) for h in results["history"]
    )
    (model,) = loaded
    q_proj = model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.dtype == torch.uint8
    fresh_model = load_quantized(llama_dir, "nf4", True, torch.float32)
    fresh = dict(fresh_model.named_parameters())
    changed = set()
    for name, param in model.named_parameters():
        if name.startswith("_adapterhub."):
            continue
        assert not param.requires_grad and param.grad is None, name
        if param.dtype != torch.uint8:  # norms, embeddings: exactly as loaded
            assert torch.equal(param, fresh[f"model.{name}"]), name
    # the codes: bitsandbytes repacks them for its CPU kernel at the first eval forward (lossy way back), so compare
    # the weight the layer computes with, within that kernel's bfloat16 rounding
    torch.testing.assert_close(
        dequantized_weight(q_proj),
        dequantized_weight(fresh_model.model.layers[0].self_attn.q_proj),
        atol=5e-2,
        rtol=0,
    )
    for name, param in model.named_parameters():
        if "lora_B" in name and param.abs().sum() > 0:  # B starts at zero: it moved
            changed.add(name)
    assert changed
    code = main([str(a) for a in ["evaluate", out, "--data", sentiment_dir, "--quantize", "nf4", *FLAGS[:5]]])
    captured = capsys.readouterr()
    assert code == 0, captured.err


def test_quantize_refuses_methods_that_train_base_weights(tmp_path, llama_dir, sentiment_dir, capsys):
    argv = ["train", "--data", sentiment_dir, "--model", llama_dir, "--quantize", "int8", "--method", "full"]
    code = main([str(a) for a in [*argv, "--output-dir", tmp_path / "r", *FLAGS]])
    assert code == 2 and "--quantize int8" in capsys.readouterr().err
    argv = [
        "compare",
        "--data",
        sentiment_dir,
        "--model",
        llama_dir,
        "--quantize",
        "nf4",
        "--methods",
        "full",
    ]
    code = main([str(a) for a in [*argv, "--output-dir", tmp_path / "c", *FLAGS]])
    assert code == 2 and "adapter method" in capsys.readouterr().err


def test_training_json_records_quantize_and_checkpointing_and_ablate_follows_it(
    tmp_path, llama_dir, sentiment_dir, monkeypatch, capsys
):
    """The run records how its base was loaded; evaluate and ablate reload it that way by default (said on
    stderr), --quantize none gives the float base, and ablation.json says which base it ablated."""
    out = tmp_path / "run"
    argv = ["train", "--data", sentiment_dir, "--model", llama_dir, "--quantize", "nf4"]
    argv += ["--method", "adapter:pfeiffer[reduction_factor=4]", "--max-steps", "2", "--output-dir", out]
    argv += ["--gradient-checkpointing", *FLAGS]
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "best" / "training.json").read_text())
    assert info["quantize"] == "nf4" and info["gradient_checkpointing"] == "non-reentrant"

    loads = []
    original = modeling.load_base

    def spy(path, **kwargs):
        loads.append(kwargs.get("quantize"))
        return original(path, **kwargs)

    monkeypatch.setattr(modeling, "load_base", spy)
    ablation = tmp_path / "ablation"
    code = main(
        [str(a) for a in ["ablate", out, "--data", sentiment_dir, "--output-dir", ablation, *FLAGS[:5]]]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert loads == ["nf4"] and "quantised nf4, as the run was trained" in captured.err
    payload = json.loads((ablation / "ablation.json").read_text())
    assert payload["quantize"] == "nf4" and payload["num_layers"] == 2
    argv = [
        "ablate",
        out,
        "--data",
        sentiment_dir,
        "--output-dir",
        ablation,
        "--quantize",
        "none",
        *FLAGS[:5],
    ]
    assert main([str(a) for a in argv]) == 0
    assert loads[-1] is None and json.loads((ablation / "ablation.json").read_text())["quantize"] is None
    argv = ["evaluate", out, "--data", sentiment_dir, "--quantize", "fp4", *FLAGS[:5]]
    assert main([str(a) for a in argv]) == 0
    assert loads[-1] == "fp4"


def test_an_unquantised_run_records_none(tmp_path, llama_dir, sentiment_dir, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", sentiment_dir, "--model", llama_dir, "--method", "adapter:lora[r=2]"]
    code = main([str(a) for a in [*argv, "--max-steps", "1", "--output-dir", out, *FLAGS]])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "best" / "training.json").read_text())
    assert info["quantize"] is None and info["gradient_checkpointing"] is None
