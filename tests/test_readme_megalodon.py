"""The README's Megalodon commands, as written, from a folder laid out like the repository
root: segment-recurrent ``fairseq-train`` of ``megalodon_lm_tiny`` on the ``bin`` folder
that the "Language modelling in brief" block's first command makes, then carried-state
evaluation with ``scripts/eval_lm_stateful.py``."""

import re

import pytest

from mega_fairseq.evaluation.count_baselines import unigram_perplexity
from test_readme_commands import README, folder_with_lm_text, lm_block, readme_blocks, run_as_written


def megalodon_block():
    blocks = [commands for heading, commands in readme_blocks(README.read_text()) if heading == "Megalodon"]
    assert len(blocks) == 1, "README.md has no (or more than one) bash block under 'Megalodon'"
    return blocks[0]


@pytest.mark.slow
def test_megalodon_segment_training_as_written(tmp_path, shakespeare_lm_data):
    root = folder_with_lm_text(tmp_path / "repo", shakespeare_lm_data)
    run_as_written(lm_block()[0], root)  # fairseq-preprocess ... --destdir bin
    train, evaluate = megalodon_block()

    result = run_as_written(train, root)
    log = result.stdout + result.stderr
    assert "segment-recurrent order" in log, log[-3000:]
    assert (root / "checkpoints" / "megalodon" / "checkpoint_best.pt").is_file()

    baseline = unigram_perplexity(root / "bin", "test")
    result = run_as_written(evaluate, root)
    scores = dict(re.findall(r"(independent|stateful): \d+ tokens \| loss \(base 2\) ([0-9.]+)",
                             result.stdout + result.stderr))
    assert set(scores) == {"independent", "stateful"}, result.stdout[-3000:]
    stateful, independent = 2 ** float(scores["stateful"]), 2 ** float(scores["independent"])
    print(f"README Megalodon block: stateful {stateful:.1f}, independent {independent:.1f}, unigram {baseline:.1f}")
    assert stateful < 0.8 * baseline, (stateful, baseline)
