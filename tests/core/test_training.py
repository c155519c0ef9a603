"""Only the trained adapter (and its head) change; the base and every other adapter stay bit-identical."""

import pytest
import torch

import adapterhub
from tiny_models import ARCHITECTURES, build, make_inputs


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("head", ["static", "flexible"])
def test_only_the_adapter_and_its_head_train(arch, head):
    model = adapterhub.init(build(arch, "classification", num_labels=3))
    model.add_adapter("task", config="houlsby")
    model.add_adapter("other", config="pfeiffer")
    if head == "flexible":
        model.add_classification_head("task", num_labels=3)
    model.train_adapter("task")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith("_adapterhub.adapters.task.")
        or "head" in n
        or n.startswith(("classifier", "score", "pre_classifier", "pooler", "_adapterhub.heads.task"))
        for n in trainable
    )
    before = snapshot(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = make_inputs()
    labels = torch.tensor([0, 1, 2])
    losses = []
    for _ in range(8):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("_adapterhub.adapters.task.") for k in changed)
    head_prefix = "_adapterhub.heads.task." if head == "flexible" else None
    for key in changed:
        in_adapter = key.startswith("_adapterhub.adapters.task.")
        in_head = (
            key.startswith(head_prefix)
            if head_prefix
            else not key.startswith(model.base_model_prefix + ".") and not key.startswith("_adapterhub.")
        )
        assert in_adapter or in_head, f"{key} changed but is not part of the trained adapter/head"
    summary = model.adapter_summary()
    assert summary["task"].trainable and not summary["other"].trainable and summary["task"].active


def test_train_adapter_requires_an_existing_adapter():
    model = adapterhub.init(build("bert"))
    with pytest.raises(adapterhub.AdapterNotFoundError, match="add_adapter"):
        model.train_adapter("missing")
