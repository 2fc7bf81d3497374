"""fairseq-eval-lm fails instead of reporting the perplexity of nothing: skipped samples
(for Mega models), zero evaluated tokens, and a --context-window that leaves nothing to
score (mega_fairseq_compat/eval_lm_checks.py). Runs that score tokens, plain and with a
context window, are tests/test_cli_mega_lm.py's."""

import os
import subprocess
from types import SimpleNamespace

import pytest

from conftest import REPO, console_script, run_cli
from lm_helpers import build_lm
from mega_fairseq_compat import eval_lm_checks
from mega_fairseq_compat.eval_lm_checks import EvalLmError
from tiny_lm_data import write_tiny_lm_data

ENV = dict(OMP_NUM_THREADS="1")


def _cfg(context_window, tokens_per_sample):
    return SimpleNamespace(eval_lm=SimpleNamespace(context_window=context_window),
                           task=SimpleNamespace(tokens_per_sample=tokens_per_sample))


@pytest.mark.parametrize("window", [16, 20])
def test_context_window_not_below_tokens_per_sample_is_refused(window):
    with pytest.raises(EvalLmError, match=f"--context-window {window} must be smaller than "
                                          "--tokens-per-sample 16"):
        eval_lm_checks.check_context_window(_cfg(window, 16))
    for fine in (0, 15):
        eval_lm_checks.check_context_window(_cfg(fine, 16))


def _run(skipped, tokens, samples=10):
    run = eval_lm_checks._Run("test")
    run.samples, run.skipped, run.tokens, run.max_positions = samples, skipped, tokens, 16
    return run


def test_skipped_samples_fail_only_for_plugin_models():
    mega = build_lm()
    with pytest.raises(EvalLmError, match=r"3 of 10 samples of split 'test' are longer than the "
                                          r"model's max positions \(16\)"):
        eval_lm_checks.check_skipped(_run(3, 100), [mega])
    eval_lm_checks.check_skipped(_run(0, 100), [mega])
    eval_lm_checks.check_skipped(_run(3, 100), [object()])  # other models: fairseq's warning


def test_zero_scored_tokens_fail_for_every_model():
    with pytest.raises(EvalLmError, match=r"evaluated 0 tokens of split 'test': all 10 samples"):
        eval_lm_checks.check_scored(_run(10, 0))
    with pytest.raises(EvalLmError, match="holds no tokens"):
        eval_lm_checks.check_scored(_run(0, 0, samples=0))
    eval_lm_checks.check_scored(_run(0, 5))


# ------------------------------------------------------------ through the console scripts
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """mega_lm_tiny with full attention and the simple bias: 16 positions at most."""
    root = tmp_path_factory.mktemp("eval-lm-checks")
    data = write_tiny_lm_data(root / "data")
    run_cli([console_script("fairseq-train"), data, "--user-dir", REPO / "mega_fairseq",
             "--task", "language_modeling", "--arch", "mega_lm_tiny", "--tokens-per-sample", "16",
             "--sample-break-mode", "none", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "4",
             "--cpu", "--no-progress-bar", "--num-workers", "0", "--max-update", "1",
             "--disable-validation", "--no-epoch-checkpoints", "--save-dir", root / "ckpt"], env=ENV)
    return data, root / "ckpt" / "checkpoint_last.pt"


def _eval_lm(data, path, *extra):
    command = [console_script("fairseq-eval-lm"), data, "--user-dir", REPO / "mega_fairseq",
               "--path", path, "--gen-subset", "test", "--cpu", "--batch-size", "4",
               "--num-workers", "0", *extra]
    return subprocess.run([str(a) for a in command], capture_output=True, text=True,
                          env=dict(os.environ, **ENV), timeout=300)


@pytest.mark.slow
def test_eval_lm_on_samples_longer_than_the_model_fails_with_the_count(checkpoint):
    data, path = checkpoint
    result = _eval_lm(data, path, "--tokens-per-sample", "64")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    # 60 lines x 13 tokens = 780 tokens: 12 blocks of 64 tokens and one of 12
    assert result.stderr.strip().splitlines()[-1].startswith(
        "fairseq-eval-lm: error: 12 of 13 samples of split 'test' are longer than the model's "
        "max positions (16)")
    assert "Traceback" not in result.stderr and "Perplexity" not in result.stdout


@pytest.mark.slow
def test_eval_lm_context_window_must_leave_tokens_to_score(checkpoint):
    data, path = checkpoint
    result = _eval_lm(data, path, "--tokens-per-sample", "16", "--context-window", "16")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "fairseq-eval-lm: error: --context-window 16 must be smaller than --tokens-per-sample 16")
    assert "Traceback" not in result.stderr
