"""``mega_lm`` end to end through the unmodified fairseq console scripts:
fairseq-train -> checkpoint -> resume -> fairseq-eval-lm, on real text."""

import re

import pytest

from conftest import REPO, console_script, run_cli, with_option_values
from mega_fairseq.evaluation.count_baselines import unigram_perplexity

TRAIN = [
    "--user-dir", REPO / "mega_fairseq", "--task", "language_modeling", "--arch", "mega_lm_tiny",
    "--tokens-per-sample", "64", "--decoder-chunk-size", "16", "--sample-break-mode", "none",
    "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "20",
    "--batch-size", "16", "--cpu", "--seed", "1", "--no-progress-bar", "--log-format", "simple",
    "--no-epoch-checkpoints", "--log-interval", "20",
]


# the trained model's test perplexity must be below this fraction of the unigram baseline's
MARGIN = 0.8


PROMPTS = "To be , or not to be\nThe king\n"


def interactive_continuations(data, checkpoint):
    """The hypotheses (H- lines) ``fairseq-interactive`` writes for PROMPTS with beam search
    (beam 3) and with top-k sampling, one list per mode."""
    interactive = [console_script("fairseq-interactive"), data, "--user-dir", REPO / "mega_fairseq",
                   "--task", "language_modeling", "--path", checkpoint, "--cpu",
                   "--max-len-b", "12", "--tokens-per-sample", "64"]
    continuations = []
    for extra in (["--beam", "3"], ["--sampling", "--sampling-topk", "10", "--beam", "1", "--seed", "3"]):
        result = run_cli(interactive + extra, input_text=PROMPTS)
        continuations.append(re.findall(r"^H-\d+\t\S+\t(.*)$", result.stdout, re.M))
    return continuations


def _perplexity(output: str) -> float:
    return float(re.search(r"Perplexity: ([0-9.]+)", output).group(1))


@pytest.mark.slow
def test_train_resume_and_eval_lm(tmp_path, shakespeare_lm_data):
    save = tmp_path / "ckpt"
    run_cli([console_script("fairseq-train"), shakespeare_lm_data, *TRAIN, "--max-update", "60", "--save-dir", save])
    resumed = run_cli([console_script("fairseq-train"), shakespeare_lm_data, *TRAIN, "--max-update", "120",
                       "--save-dir", save])
    log = resumed.stdout + resumed.stderr
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 60 updates\)", log), log[-3000:]
    assert "num_updates 120" in log

    # the context-free baseline on the same test tokens, in the same units (base 2, eos
    # included): a model whose sequence mixing is broken scores near it, a working one
    # well below
    baseline = unigram_perplexity(shakespeare_lm_data, "test")
    evaluate = [console_script("fairseq-eval-lm"), shakespeare_lm_data, "--user-dir", REPO / "mega_fairseq",
                "--path", save / "checkpoint_last.pt", "--gen-subset", "test", "--cpu",
                "--tokens-per-sample", "64", "--batch-size", "8"]
    plain = run_cli(evaluate)
    perplexity = _perplexity(plain.stdout + plain.stderr)
    windowed = run_cli(evaluate + ["--context-window", "32", "--softmax-batch", "100"])
    windowed_perplexity = _perplexity(windowed.stdout + windowed.stderr)
    print(f"PPL unigram {baseline:.2f} model {perplexity:.2f} windowed {windowed_perplexity:.2f}")
    assert perplexity < MARGIN * baseline, (perplexity, baseline)
    assert windowed_perplexity < MARGIN * baseline, (windowed_perplexity, baseline)

    # generation through fairseq-interactive: beam search and sampling continue the prompt
    for hypotheses in interactive_continuations(shakespeare_lm_data, save / "checkpoint_last.pt"):
        assert len(hypotheses) == 2, hypotheses
        assert hypotheses[0].startswith("To be , or not to be") and len(hypotheses[0].split()) > 7


@pytest.mark.slow
def test_long_context_chunked_training(tmp_path, shakespeare_lm_data):
    """2048-token samples with a chunk size that does not divide them train and evaluate."""
    save = tmp_path / "ckpt"
    long_context = with_option_values(TRAIN, tokens_per_sample="2048", decoder_chunk_size="100", batch_size="2")
    result = run_cli([console_script("fairseq-train"), shakespeare_lm_data, *long_context,
                      "--max-update", "4", "--save-dir", save])
    assert "num_updates 4" in result.stdout + result.stderr
    evaluated = run_cli([console_script("fairseq-eval-lm"), shakespeare_lm_data, "--user-dir", REPO / "mega_fairseq",
                         "--path", save / "checkpoint_last.pt", "--cpu", "--tokens-per-sample", "2048",
                         "--batch-size", "2"])
    assert "Perplexity" in evaluated.stdout + evaluated.stderr


@pytest.mark.slow
def test_fairseq_generate_language_modeling(tmp_path, shakespeare_lm_data):
    """fairseq-generate --task language_modeling continues every test line (beam 2)."""
    save = tmp_path / "ckpt"
    run_cli([console_script("fairseq-train"), shakespeare_lm_data, *TRAIN, "--max-update", "20", "--save-dir", save])
    result = run_cli([console_script("fairseq-generate"), shakespeare_lm_data, "--user-dir", REPO / "mega_fairseq",
                      "--task", "language_modeling", "--path", save / "checkpoint_last.pt", "--cpu",
                      "--tokens-per-sample", "64", "--beam", "2", "--max-len-b", "150",
                      "--sample-break-mode", "eos", "--batch-size", "64", "--gen-subset", "valid"])
    lines = sum(1 for _ in open(shakespeare_lm_data / ".." / "text" / "valid.txt"))
    assert len(re.findall(r"^H-\d+\t", result.stdout, re.M)) == lines
