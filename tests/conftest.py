"""Shared fixtures for the whole suite."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import transformers

from tiny_models import make_inputs

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*attention mask.*")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    return make_inputs()
