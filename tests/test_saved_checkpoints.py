"""Checkpoints saved by an earlier version of the code (tests/fixtures/saved_checkpoints,
see its README) still load through fairseq's own loader and compute the outputs that
version computed: restructuring must not break checkpoints users already have."""

from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

import mega_fairseq  # noqa: F401  (registers the models and tasks, as --user-dir does)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saved_checkpoints"
FAMILIES = ("lm", "translation", "classification")


def _load(family: str):
    folder = FIXTURES / family
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(folder / "checkpoint.pt")], arg_overrides={"data": str(folder / "data")})
    return models[0].eval(), task


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_checkpoint_loads_and_computes_the_saved_output(family):
    model, _task = _load(family)
    expected = torch.load(FIXTURES / family / "expected.pt", weights_only=True)
    with torch.no_grad():
        if family == "classification":
            heads = list(model.classification_heads)
            assert len(heads) == 1
            output = model(**expected["net_input"], features_only=True, classification_head_name=heads[0])[0]
        else:
            output = model(**expected["net_input"])[0]
    assert output.shape == expected["output"].shape
    # the same float32 computation, possibly in another order of operations
    torch.testing.assert_close(output, expected["output"], atol=1e-5, rtol=1e-5)
    # a model that merely loads (e.g. a re-initialised block) would be far off
    assert expected["output"].abs().max() > 1e-2


def test_fixtures_record_their_commit():
    for family in FAMILIES:
        commit = torch.load(FIXTURES / family / "expected.pt", weights_only=True)["commit"]
        assert len(commit) == 40 and commit in (FIXTURES / "README.md").read_text()
