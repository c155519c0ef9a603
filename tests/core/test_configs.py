import pytest

from adapterhub import BottleneckConfig, ConfigError, resolve_config
from adapterhub.spec.configs import PRESETS


def test_presets_have_the_semantics_of_the_design():
    pfeiffer, houlsby, bapna = (
        resolve_config("pfeiffer"),
        resolve_config("houlsby"),
        resolve_config("bapna_firat"),
    )
    assert pfeiffer.sites == ("ffn",) and pfeiffer.original_ln_before and pfeiffer.original_ln_after
    assert pfeiffer.residual_before_ln is True and pfeiffer.non_linearity == "relu"
    assert houlsby.sites == ("attn", "ffn") and not houlsby.original_ln_before and houlsby.original_ln_after
    assert houlsby.non_linearity == "swish"
    assert (
        bapna.sites == ("ffn",)
        and bapna.ln_before
        and not bapna.original_ln_after
        and bapna.residual_before_ln is False
    )


def test_aliases_and_overrides():
    assert resolve_config("seq_bn") == resolve_config("pfeiffer")
    assert resolve_config("double_seq_bn") == resolve_config("Houlsby")
    cfg = resolve_config("pfeiffer[reduction_factor=64, leave_out=[0,2], non_linearity=gelu, scaling=0.5]")
    assert (
        cfg.reduction_factor == 64
        and cfg.leave_out == (0, 2)
        and cfg.non_linearity == "gelu"
        and cfg.scaling == 0.5
    )


def test_round_trip_and_hash():
    cfg = BottleneckConfig(reduction_factor={"default": 16, "0": 2}, leave_out=[3, 1])
    again = resolve_config(cfg.to_dict())
    assert again == cfg and hash(again) == hash(cfg)
    assert again.canonical_hash() == cfg.canonical_hash()
    assert cfg.reduction_factor_for(0) == 2 and cfg.reduction_factor_for(5) == 16
    assert cfg.leave_out == (1, 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("pfeifer", "did you mean 'pfeiffer'"),
        ({"method": "bottleneck", "reduction_factr": 4}, "Valid keys"),
        ({"method": "lorax"}, "Unknown method"),
        ("pfeiffer[reduction_factor=0]", "positive number"),
        ("pfeiffer[reduction_factor=abc]", "positive number"),
        ("pfeiffer[non_linearity=softplus2]", "non_linearity"),
        ("pfeiffer[leave_out=[-1]]", "leave_out"),
        ("pfeiffer[after_ffn=false]", "sit nowhere"),
        ("pfeiffer[residual_before_ln=maybe]", "residual_before_ln"),
        ("pfeiffer[ln_before=1]", "true or false"),
        ("pfeiffer[reduction_factor=64", "Malformed"),
        ({"method": "bottleneck", "reduction_factor": {"3": 2}}, "default"),
        (42, "preset name"),
    ],
)
def test_bad_configs_are_rejected_with_a_useful_message(bad, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(bad)


def test_unknown_key_error_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        BottleneckConfig.from_dict({"reduction_factr": 4})
    assert "reduction_factor" in str(info.value) and "leave_out" in str(info.value)


def test_zero_width_bottleneck_is_refused():
    cfg = resolve_config("pfeiffer[reduction_factor=64]")
    assert cfg.bottleneck_width(768, 0) == 12
    with pytest.raises(ConfigError, match="zero-width"):
        cfg.bottleneck_width(32, 0)


def test_configs_are_frozen():
    cfg = PRESETS["pfeiffer"]()
    with pytest.raises(AttributeError):
        cfg.reduction_factor = 2  # type: ignore[misc]
