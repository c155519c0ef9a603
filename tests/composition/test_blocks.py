"""Composition blocks as data: validation with clear errors, hash / equality by structure, JSON round trip."""

import json
import threading

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.spec.composition import (
    Average,
    BatchSplit,
    Fuse,
    Parallel,
    Split,
    Stack,
    nesting_table,
    normalize_setup,
    setup_from_json,
    setup_to_json,
)
from tiny_models import build, make_inputs, perturb

EXAMPLES = [
    "a",
    Stack("lang", "task"),
    Stack("lang", Fuse("a", "b", "c")),
    Stack("lang", Parallel("a", Stack("b", "c"))),
    Split("a", "b", split_index=3),
    Split("a", Stack("b", "c"), Fuse("d", "e"), split_index=[2, 5]),
    BatchSplit("a", Average("b", "c", weights=[0.25, 0.75]), batch_sizes=[2, 1]),
    Parallel("a", Fuse("b", "c"), BatchSplit("d", "e", batch_sizes=[1, 2])),
    Average("a", "b", "c"),
    Average("a", Split("b", "c", split_index=1), weights=[2, 1], normalize_weights=False),
]


@pytest.mark.parametrize("setup", EXAMPLES, ids=repr)
def test_json_round_trip_keeps_structure_names_and_parameters(setup):
    text = setup_to_json(setup)
    back = setup_from_json(text)
    assert back == setup and hash(back) == hash(setup) and repr(back) == repr(setup)
    assert json.loads(setup_to_json(back)) == json.loads(text)


def test_parameters_survive_json():
    data = json.loads(setup_to_json(BatchSplit("a", Split("b", "c", split_index=4), batch_sizes=[3, 2])))
    assert data == {
        "type": "BatchSplit",
        "children": ["a", {"type": "Split", "children": ["b", "c"], "split_index": [4]}],
        "batch_sizes": [3, 2],
    }
    avg = json.loads(setup_to_json(Average("a", "b", weights=[1, 3])))
    assert avg["weights"] == [1.0, 3.0] and avg["normalize_weights"] is True


def test_equality_and_hash_are_by_structure():
    assert Stack("a", "b") == Stack("a", "b") and hash(Stack("a", "b")) == hash(Stack("a", "b"))
    assert Stack("a", "b") != Stack("b", "a")
    assert Stack("a", "b") != Parallel("a", "b")  # same children, different block
    assert Split("a", "b", split_index=2) != Split("a", "b", split_index=3)
    assert BatchSplit("a", "b", batch_sizes=[1, 2]) != BatchSplit("a", "b", batch_sizes=[2, 1])
    assert Average("a", "b", weights=[1, 2]) != Average("a", "b")
    assert len({Fuse("a", "b"), Fuse("a", "b"), Fuse("b", "a")}) == 2
    assert {Stack("x", Fuse("a", "b")): 1}[Stack("x", Fuse("a", "b"))] == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Fuse("a", Stack("b", "c")), "cannot be nested in Fuse"),
        (lambda: Fuse("a"), "at least 2"),
        (lambda: Parallel("a"), "at least 2"),
        (lambda: Split("a", Parallel("b", "c"), split_index=1), "cannot be nested in Split"),
        (lambda: Average("a", Average("b", "c")), "cannot be nested in Average"),
        (lambda: Parallel("a", Parallel("b", "c")), "cannot be nested in Parallel"),
        (
            lambda: BatchSplit("a", Stack("b", Parallel("c", "d")), batch_sizes=[1, 1]),
            "Parallel cannot be nested",
        ),
        (lambda: Stack(Split("a", "b", split_index=1), "c"), "only be the last element of a Stack"),
        (lambda: Stack(Parallel("a", "b"), "c"), "only be the last element"),
        (lambda: Stack(Stack("x", Average("a", "b")), "c"), "only be the last element"),
        (lambda: Split("a", "b", split_index=[1, 2]), "needs 1 split index"),
        (lambda: Split("a", "b", "c", split_index=[3, 2]), "positive and increasing"),
        (lambda: Split("a", "b", split_index=0), "positive"),
        (lambda: BatchSplit("a", "b", batch_sizes=[1]), "one batch size per child"),
        (lambda: BatchSplit("a", "b", batch_sizes=[1, -1]), "non-negative"),
        (lambda: Average("a", "b", weights=[1.0]), "one weight per child"),
        (lambda: Average("a", "b", weights=[1.0, -1.0]), "sum to 0"),
        (lambda: Stack("a", 3), "takes adapter names or blocks"),
        (lambda: Stack(), "at least 1"),
    ],
)
def test_invalid_nestings_and_parameters_are_refused_clearly(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_nesting_table_matches_the_documentation():
    table = nesting_table()
    assert table["Fuse"] == ["name"]
    assert "Parallel" in table["Stack"] and "Parallel" not in table["Split"]
    assert "Average" not in table["Average"] and "Fuse" in table["Average"]
    from adapterhub.spec import composition

    for block in table:
        assert block in composition.__doc__


def test_bad_json_is_refused():
    with pytest.raises(ConfigError, match="Unknown block type 'Stak'"):
        setup_from_json('{"type": "Stak", "children": ["a"]}')
    with pytest.raises(ConfigError, match="Bad parameters for Split"):
        setup_from_json('{"type": "Split", "children": ["a", "b"], "split": 2}')
    with pytest.raises(ConfigError, match="needs 1 split index"):
        setup_from_json('{"type": "Split", "children": ["a", "b"], "split_index": []}')


def test_lists_become_stacks_and_blocks_are_usable_as_active_setup():
    assert normalize_setup(["a", "b"]) == Stack("a", "b")
    model = adapterhub.init(build("bert"))
    for name in ("lang", "a", "b"):
        model.add_adapter(name)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.active_adapters = Stack("lang", Fuse("a", "b"))
    assert model.active_adapters == Stack("lang", Fuse("a", "b"))
    with model.adapter_setup(Parallel("a", "b")):
        assert model.active_adapters == Parallel("a", "b")
    assert model.active_adapters == Stack("lang", Fuse("a", "b"))


def test_setup_override_is_per_thread():
    model = adapterhub.init(build("bert"))
    for name in ("a", "b"):
        model.add_adapter(name)
        perturb(model._adapterhub.adapters[name], seed=len(name) + ord(name))
    inputs = make_inputs()
    with torch.no_grad():
        with model.adapter_setup("a"):
            ref_a = model(**inputs).last_hidden_state
        with model.adapter_setup(BatchSplit("a", "b", batch_sizes=[2, 1])):
            ref_split = model(**inputs).last_hidden_state
    results, barrier = {}, threading.Barrier(2)

    def worker(key, setup):
        with torch.no_grad(), model.adapter_setup(setup):
            barrier.wait()
            for _ in range(3):
                results[key] = model(**inputs).last_hidden_state

    threads = [
        threading.Thread(target=worker, args=("a", "a")),
        threading.Thread(target=worker, args=("split", BatchSplit("a", "b", batch_sizes=[2, 1]))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(results["a"], ref_a) and torch.equal(results["split"], ref_split)


def test_setup_json_command(capsys):
    from adapterhub.cli import main

    assert main(["setup-json", 'Stack("lang", Fuse("a", "b"), Split("c", "d", split_index=4))']) == 0
    printed = capsys.readouterr().out
    assert setup_from_json(printed) == Stack("lang", Fuse("a", "b"), Split("c", "d", split_index=4))
    assert main(["setup-json", 'Fuse("a")']) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["setup-json", "__import__('os')"]) == 2
    assert main(["fusion-heatmap", "/nonexistent.json", "-o", "/tmp/x.png"]) == 2
