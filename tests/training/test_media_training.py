"""Image rows through ``adapterhub train`` / ``evaluate`` on a tiny random ViT saved to disk: only the adapter and
head train, evaluate reproduces the dev accuracy, the saved adapter reloads with identical outputs."""

from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image

from adapterhub.cli import main
from adapterhub.data import load_task
from adapterhub.training.loop import train
from adapterhub.training.media_batches import collate_media, load_media_processor, media_datasets
from adapterhub.training.modeling import load_trained
from tiny_models import build


@pytest.fixture
def vit_dir(tmp_path):
    folder = tmp_path / "vit"
    build("vit").save_pretrained(folder)
    return folder


@pytest.fixture
def colour_dir(tmp_path):
    """Red vs blue 20x18 images (the tiny ViT reads 16x16): 16 train rows, 8 dev rows."""
    folder = tmp_path / "colours"
    (folder / "pics").mkdir(parents=True)
    rng = random.Random(0)
    rows = []
    for i in range(24):
        red = i % 2 == 0
        noise = [rng.randint(0, 50) for _ in range(3)]
        colour = (205 + noise[0], noise[1], noise[2]) if red else (noise[0], noise[1], 205 + noise[2])
        Image.new("RGB", (20, 18), color=colour).save(folder / "pics" / f"{i}.png")
        rows.append({"image": f"pics/{i}.png", "label": "red" if red else "blue"})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]), encoding="utf-8")
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[16:]), encoding="utf-8")
    return folder


def test_train_and_evaluate_through_the_cli(vit_dir, colour_dir, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--no-progress", "--batch-size", "4"]
    argv = ["train", "--data", colour_dir, "--model", vit_dir, "--method", "adapter:lora", "--epochs", "3"]
    assert main([str(a) for a in [*argv, "--lr", "1e-2", "--output-dir", out, *flags]]) == 0
    captured = capsys.readouterr()
    assert "image preprocessing: no preprocessor_config.json" in captured.err and "mean 0.5" in captured.err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["task"]["media"] == "image"
    assert results["metric"]["name"] == "accuracy" and results["steps"] == 12
    assert json.loads((out / "best" / "training.json").read_text())["media"] == "image"
    report = tmp_path / "eval.json"
    assert main([str(a) for a in ["evaluate", out, "--data", colour_dir, "--output", report, *flags]]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["accuracy"] == pytest.approx(results["dev_metrics"]["accuracy"])
    assert metrics["loss"] == pytest.approx(results["dev_metrics"]["loss"], abs=1e-5)


def test_only_adapter_and_head_train_and_the_saved_adapter_reloads(vit_dir, colour_dir, tmp_path):
    task = load_task(colour_dir)
    model = build("vit")
    model.config.name_or_path = str(vit_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = train(
        model,
        task,
        method="adapter:lora",
        epochs=2,
        learning_rate=1e-2,
        batch_size=4,
        progress=False,
        output_dir=str(tmp_path / "run"),
    )
    assert result.task["preprocessing"].startswith("no preprocessor_config.json")
    after = dict(model.named_parameters())
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())  # the base is frozen
    added = {name: p for name, p in after.items() if name not in before}
    assert any("lora_B" in name or "lora_b" in name.lower() for name in added)
    assert all(p.abs().sum() > 0 for name, p in added.items() if "lora_b" in name.lower())  # B starts at zero
    processor = load_media_processor(None, model.config, "image")
    batch = collate_media([media_datasets(task, processor)[1][i] for i in range(len(task.dev))])
    reloaded, _, info = load_trained(tmp_path / "run" / "best")
    assert info["media"] == "image"
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=batch["pixel_values"]).logits  # (dev rows, 2)
        got = reloaded(pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_the_model_folders_image_processor_is_used(vit_dir, colour_dir):
    import transformers

    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.2] * 3).save_pretrained(
        vit_dir
    )
    task = load_task(colour_dir)
    processor = load_media_processor(vit_dir, build("vit").config, "image")
    assert "from" in processor.description and "preprocessor_config.json" in processor.description
    pixels = processor(task.dev[0].media)
    reference = transformers.AutoImageProcessor.from_pretrained(vit_dir)(
        images=[Image.open(task.dev[0].image).convert("RGB")], return_tensors="pt"
    )["pixel_values"][0]
    assert pixels.shape == (3, 16, 16)
    torch.testing.assert_close(pixels, reference.float())
