"""Fuzzing: no identifier, query, card or upload makes the server answer 500 (both backends)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapterhub.hub.archive import pack_directory_bytes
from adapterhub.hub.errors import InvalidIdentifierError
from adapterhub.hub.identifiers import parse_identifier

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

pieces = st.sampled_from(
    [
        "sentiment",
        "sst-2",
        "sst",
        "nli",
        "mnli",
        "de",
        "alice",
        "acme",
        "@",
        "/",
        ":",
        "1",
        "v2",
        "0",
        "-",
        "_",
        ".",
        "..",
        "bert-sst2",
        " ",
        "\x00",
        "é",
        "%",
        "%00",
        "*",
        "?",
        "#",
    ]
)
identifiers = st.one_of(st.text(max_size=60), st.lists(pieces, max_size=8).map("".join))


@given(text=identifiers)
@settings(max_examples=300, deadline=None)
def test_parse_identifier_total(text):
    try:
        ident = parse_identifier(text)
    except InvalidIdentifierError as error:
        assert error.code == "bad_identifier" and str(error)
        return
    assert ident.is_direct == (ident.name is not None)
    assert (ident.word is None) == ident.is_direct
    assert ident.version is None or ident.version >= 1


@pytest.fixture
def populated(hub_env):
    hub_env.upload("alice", "bert-sst2", hub_env.adapter_dir(name="bert-sst2"))
    hub_env.upload("acme", "bert-sst2", hub_env.adapter_dir(name="bert-sst2"))
    return hub_env


@FUZZ
@given(
    identifier=identifiers,
    model_type=st.one_of(st.just("bert"), st.text(max_size=20)),
    hidden_size=st.one_of(st.just(32), st.integers(min_value=-5, max_value=2**70)),
    config=st.one_of(st.none(), st.text(max_size=30), st.just("pfeiffer")),
)
def test_resolve_never_500(populated, identifier, model_type, hidden_size, config):
    params = {"identifier": identifier, "model_type": model_type, "hidden_size": hidden_size}
    if config is not None:
        params["config"] = config
    r = populated.client.get("/api/v1/resolve", params=params)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["error"]["code"]


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(
            [
                "q",
                "task",
                "subtask",
                "model_type",
                "model_name",
                "hidden_size",
                "config",
                "owner",
                "language",
                "adapter_type",
                "sort",
                "page",
                "per_page",
            ]
        ),
        st.one_of(st.text(max_size=40), st.integers(min_value=-10, max_value=2**70).map(str)),
        max_size=6,
    )
)
def test_search_never_500(populated, params):
    r = populated.client.get("/api/v1/adapters", params=params)
    assert r.status_code < 500, r.text


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
card_keys = st.sampled_from(
    [
        "adapter_type",
        "task",
        "subtask",
        "language",
        "license",
        "description",
        "citation",
        "metrics",
        "config_name",
        "model_type",
        "model_name",
        "hidden_size",
        "extra",
    ]
)
plausible = {
    "task": st.sampled_from(["sentiment", "nli", "x", ""]),
    "subtask": st.sampled_from(["sst-2", "mnli", "?"]),
    "adapter_type": st.sampled_from(["task", "language", "other"]),
    "language": st.sampled_from(["de", "en", "zz"]),
    "metrics": st.dictionaries(st.text(max_size=70), st.floats() | st.text(max_size=3), max_size=3),
}
cards = st.one_of(
    st.dictionaries(card_keys, json_values, max_size=6),
    st.fixed_dictionaries({}, optional={k: v | json_values for k, v in plausible.items()}),
    json_values,
)


@FUZZ
@given(card=cards, name=st.sampled_from(["ok-name", "x", "bad name", "a" * 101, "..", "%00"]))
def test_upload_card_never_500(populated, card, name):
    archive = pack_directory_bytes(populated.tmp / "adapter-1")
    r = populated.client.post(
        f"/api/v1/adapters/alice/{name}/versions",
        headers=populated.auth("alice"),
        data={"card": json.dumps(card)},
        files={"archive": ("a.tar.gz", archive)},
    )
    assert r.status_code < 500, r.text


@FUZZ
@given(blob=st.binary(max_size=2000), prefix=st.sampled_from([b"", b"\x1f\x8b\x08\x00", b"PK\x03\x04"]))
def test_upload_garbage_archive_never_500(populated, blob, prefix):
    r = populated.upload("alice", "garbage", archive=prefix + blob)
    assert r.status_code in (404, 409, 413, 422), r.text
