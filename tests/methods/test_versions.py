"""What each transformers major version supports: on 4.x some methods are refused with the version they need."""

import pytest
import transformers

import adapterhub
from adapterhub.errors import ConfigError
from tiny_models import build

ON_4X = int(transformers.__version__.split(".")[0]) < 5


def test_prompt_tuning_needs_transformers_5():
    """On transformers 4.x the masks come from the input ids' length: prompt tuning is refused there (5.x: allowed)."""
    model = adapterhub.init(build("llama"))
    if ON_4X:
        with pytest.raises(ConfigError, match=r"transformers >= 5\.0"):
            model.add_adapter("p", config="prompt_tuning[prompt_length=3]")
        assert not model.adapters
    else:
        model.add_adapter("p", config="prompt_tuning[prompt_length=3]")
        assert model.adapters["p"].method == "prompt_tuning"
