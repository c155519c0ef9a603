"""Per-adapter fairness of the generation scheduler: a flood of one adapter's requests cannot starve another's
(round-robin admission between adapters), and within one adapter requests stay first come, first served."""

from __future__ import annotations

from adapterhub.serving import GenerationEngine


def test_one_request_of_b_is_admitted_before_a_flood_of_a_drains(llama):
    engine = GenerationEngine(llama, max_num_seqs=2, max_batch_tokens=64, stop_ids=[])
    flood = [engine.submit([1, 2, 3], adapter="a", max_new_tokens=3) for _ in range(20)]
    b = engine.submit([4, 5], adapter="b", max_new_tokens=3)
    engine.step()
    assert b.status == "running"  # admitted in the first step, beside the first of a's twenty
    assert [h.status for h in flood[:2]] == ["running", "waiting"]
    while engine.stats()["running"] or engine.stats()["waiting"]:
        engine.step()
    assert all(h.result() for h in flood) and len(b.result()) == 3


def test_a_late_request_of_b_waits_one_turn_not_the_whole_flood(llama):
    engine = GenerationEngine(llama, max_num_seqs=2, max_batch_tokens=64, stop_ids=[])
    flood = [engine.submit([1, 2, 3], adapter="a", max_new_tokens=2) for _ in range(20)]
    engine.step()  # two of a's run; eighteen wait
    b = engine.submit([4, 5], adapter=None, max_new_tokens=2)  # the base model alone is an "adapter" too
    steps = 0
    while b.status == "waiting":
        engine.step()
        steps += 1
    finished = sum(h.status == "finished" for h in flood)
    assert finished <= 3 and steps <= 3  # first-come-first-served would make it wait for all twenty
    order = []
    while engine.stats()["running"] or engine.stats()["waiting"]:
        engine.step()
        order += [i for i, h in enumerate(flood) if h.status == "finished" and i not in order]
    assert order == sorted(order)  # within one adapter: first come, first served
