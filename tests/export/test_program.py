"""torch.export of a model with its setup and head: the ExportedProgram computes what the model computes."""

from __future__ import annotations

import pytest
import torch

from adapterhub.export import export_program
from adapterhub.spec.composition import Stack
from tiny_models import make_inputs


@pytest.mark.parametrize("arch", ["roberta", "gpt2"])
def test_exported_program_matches_the_model(arch, make_model):
    model = make_model(arch, names=("lang", "task"), head="task")
    model.set_active_adapters(Stack("lang", "task"))
    model.train()  # exported in eval mode, handed back in the mode it was in
    traced = export_program(model, make_inputs())
    assert model.training
    model.eval()
    assert traced.spec.input_names == ("input_ids", "attention_mask")
    assert traced.spec.output_names == ("logits",)
    for seed, shape in ((5, (5, 11)), (6, (1, 4))):  # other batch sizes and lengths than the example's 3 x 7
        ids = torch.randint(3, 99, shape, generator=torch.Generator().manual_seed(seed))
        mask = torch.ones_like(ids)
        mask[0, -1:] = 0
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        got = traced.run({"input_ids": ids, "attention_mask": mask})["logits"]
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5)
