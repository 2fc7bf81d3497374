"""``megalodon_lm`` end to end through the unmodified fairseq console scripts, on real
text: fairseq-train (``language_modeling`` and ``segment_language_modeling``) ->
checkpoint -> resume -> fairseq-eval-lm / scripts/eval_lm_stateful.py ->
fairseq-interactive, and the hub interface (``from_pretrained``) on the trained checkpoint."""

import math
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, console_script, run_cli, with_option_values
from mega_fairseq.evaluation.count_baselines import unigram_perplexity
from test_cli_mega_lm import MARGIN, TRAIN as MEGA_LM_TRAIN, _perplexity, interactive_continuations

TRAIN = with_option_values(MEGA_LM_TRAIN, arch="megalodon_lm_tiny")
# one epoch of the Shakespeare fixture is about 77 updates of 16 x 64 tokens: FIRST_UPDATES
# stops inside the first epoch, so that the resumed run continues it mid-way
FIRST_UPDATES = 60


SEGMENT_TRAIN = with_option_values(TRAIN, task="segment_language_modeling")


def _log(result) -> str:
    return result.stdout + result.stderr


def _losses(log: str):
    """num_updates -> training loss of the ``train_inner`` lines (--log-format simple)."""
    return {int(updates): float(loss) for loss, updates in
            re.findall(r"\| train_inner \|.* loss=([0-9.]+),.* num_updates=(\d+),", log)}


def _train(data, save, train, max_update, *extra):
    return run_cli([console_script("fairseq-train"), data, *train, *extra, "--max-update", str(max_update),
                    "--save-dir", save])


def _assert_learns(losses):
    """The first logged loss (update 20, about 12 bits: the uniform 7072-word guess is 12.8)
    drops by more than 2 bits by update FIRST_UPDATES."""
    assert sorted(losses)[-1] == FIRST_UPDATES, losses
    first, last = losses[min(losses)], losses[FIRST_UPDATES]
    assert last < first - 2.0, losses


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory, shakespeare_lm_data):
    """checkpoint_last.pt of FIRST_UPDATES updates of --task language_modeling, and the log."""
    save = tmp_path_factory.mktemp("megalodon_lm")
    result = _train(shakespeare_lm_data, save, TRAIN, FIRST_UPDATES)
    return save, _log(result)


# ------------------------------------------------------------ language_modeling
@pytest.mark.slow
def test_train_resume_eval_lm_and_interactive(tmp_path, shakespeare_lm_data, lm_checkpoint):
    trained, first_log = lm_checkpoint
    _assert_learns(_losses(first_log))
    save = tmp_path / "ckpt"
    shutil.copytree(trained, save)  # the fixture's checkpoint stays as it is for the hub test
    resumed = _log(_train(shakespeare_lm_data, save, TRAIN, 100))
    assert re.search(rf"Loaded checkpoint .*checkpoint_last\.pt \(epoch 1 @ {FIRST_UPDATES} updates\)",
                     resumed), resumed[-3000:]
    assert "num_updates 100" in resumed
    # a resume that lost the trained weights would start again near 12 bits
    resumed_losses = _losses(resumed)
    assert resumed_losses and max(resumed_losses.values()) < _losses(first_log)[FIRST_UPDATES] + 0.5, \
        (resumed_losses, _losses(first_log))

    # the context-free baseline on the same test tokens, in the same units
    # (test_cli_mega_lm.py's MARGIN)
    baseline = unigram_perplexity(shakespeare_lm_data, "test")
    evaluated = run_cli([console_script("fairseq-eval-lm"), shakespeare_lm_data, "--user-dir", REPO / "mega_fairseq",
                         "--path", save / "checkpoint_last.pt", "--gen-subset", "test", "--cpu",
                         "--tokens-per-sample", "64", "--batch-size", "8"])
    perplexity = _perplexity(_log(evaluated))
    print(f"PPL unigram {baseline:.2f} megalodon_lm_tiny {perplexity:.2f}")
    assert perplexity < MARGIN * baseline, (perplexity, baseline)

    # fairseq-interactive continues each prompt, by beam search and by sampling
    for hypotheses in interactive_continuations(shakespeare_lm_data, save / "checkpoint_last.pt"):
        assert len(hypotheses) == 2, hypotheses
        assert hypotheses[0].startswith("To be , or not to be") and len(hypotheses[0].split()) > 7, hypotheses
        assert hypotheses[1].startswith("The king"), hypotheses


# ------------------------------------------------------------------------ hub
@pytest.mark.slow
def test_hub_sample_and_beam_scores(shakespeare_lm_data, lm_checkpoint):
    """``MegalodonLanguageModel.from_pretrained`` on the trained checkpoint: sampling
    continues the prompt, and beam search's scores (incremental decoding, one token per
    step) are the log-probabilities one full forward pass gives the hypotheses."""
    from mega_fairseq.models.megalodon_lm import MegalodonLanguageModel

    save, _ = lm_checkpoint
    hub = MegalodonLanguageModel.from_pretrained(str(save), checkpoint_file="checkpoint_last.pt",
                                                 data_name_or_path=str(shakespeare_lm_data))
    model = hub.models[0]
    assert isinstance(model, MegalodonLanguageModel) and not model.training

    torch.manual_seed(3)
    text = hub.sample("To be", beam=1, sampling=True, sampling_topk=10, max_len_b=10)
    assert isinstance(text, str) and text.startswith("To be") and len(text.split()) > 2, text

    prompt = "To be , or not to be"
    hypotheses = hub.generate(hub.encode(prompt), beam=2, max_len_b=12)
    assert len(hypotheses) == 2
    assert hypotheses[0]["score"] >= hypotheses[1]["score"]
    dictionary = hub.task.source_dictionary
    for hypothesis in hypotheses:
        tokens = hypothesis["tokens"]
        assert hub.decode(tokens).startswith(prompt) and tokens[-1] == dictionary.eos()
        with torch.no_grad():
            output = model(torch.cat([tokens.new([dictionary.eos()]), tokens[:-1]]).unsqueeze(0))
            lprobs = model.get_normalized_probs(output, log_probs=True)[0]
        direct = lprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(hypothesis["positional_scores"], direct, rtol=1e-4, atol=1e-4)
        # --lenpen 1: the score is the mean log-probability, eos included
        assert hypothesis["score"].item() == pytest.approx(direct.mean().item(), abs=1e-4)


# ---------------------------------------------------- segment_language_modeling
SEGMENT_LAYOUT = re.compile(r"segment-recurrent order: (\d+) blocks of 64 tokens as 16 streams "
                            r"\(1 groups of 16\) of (\d+) segments")
SCRIPT_SCORES = re.compile(r"(independent|stateful): (\d+) tokens \| loss \(base 2\) ([0-9.]+|nan|inf)")
# stateful evaluation gives every token the whole stream as context, as the segment-trained
# model saw it in training: it may be only a little better than block-wise evaluation after
# so few updates, never clearly worse
STATEFUL_SLACK = 0.05


@pytest.mark.slow
def test_segment_training_resume_and_stateful_eval(tmp_path, shakespeare_lm_data):
    save = tmp_path / "ckpt"
    first = _log(_train(shakespeare_lm_data, save, SEGMENT_TRAIN, FIRST_UPDATES))
    layout = SEGMENT_LAYOUT.search(first)
    assert layout, first[-3000:]
    blocks, segments = map(int, layout.groups())
    assert 16 * (segments - 1) < blocks <= 16 * segments
    _assert_learns(_losses(first))

    # the carried states are not in the checkpoint: the resumed run's next segment of the
    # (only) stream group starts from an empty state, and says so
    resumed = _log(_train(shakespeare_lm_data, save, SEGMENT_TRAIN, FIRST_UPDATES + 4))
    assert re.search(rf"Loaded checkpoint .*checkpoint_last\.pt \(epoch 1 @ {FIRST_UPDATES} updates\)",
                     resumed), resumed[-3000:]
    assert "no state carried for stream group train:0 (a resumed run)" in resumed, resumed[-3000:]
    assert f"num_updates {FIRST_UPDATES + 4}" in resumed

    result = run_cli([sys.executable, REPO / "scripts" / "eval_lm_stateful.py", shakespeare_lm_data,
                      "--path", save / "checkpoint_last.pt", "--user-dir", REPO / "mega_fairseq", "--cpu",
                      "--no-progress-bar"])
    scores = {mode: (int(tokens), float(loss)) for mode, tokens, loss in SCRIPT_SCORES.findall(result.stdout)}
    assert set(scores) == {"independent", "stateful"}, result.stdout
    (tokens, independent), (stateful_tokens, stateful) = scores["independent"], scores["stateful"]
    print(f"segment-trained: independent {independent:.4f} stateful {stateful:.4f} bits/token")
    assert tokens == stateful_tokens > 1000
    assert math.isfinite(independent) and math.isfinite(stateful), scores
    assert stateful <= independent + STATEFUL_SLACK, scores


def _first_update_loss(data, save, tokens_per_sample, *extra):
    train = with_option_values(SEGMENT_TRAIN, tokens_per_sample=str(tokens_per_sample), batch_size="1",
                      decoder_chunk_size="48", log_interval="1")
    result = run_cli([console_script("fairseq-train"), data, *train, "--segment-groups", "1",
                      "--dropout", "0", "--max-update", "1", "--no-save", "--disable-validation",
                      "--save-dir", save, *extra])
    losses = _losses(_log(result))
    assert sorted(losses) == [1], _log(result)[-3000:]
    return losses[1]


@pytest.mark.slow
def test_segments_continue_the_previous_segments_state(tmp_path, shakespeare_lm_data):
    """One stream (--batch-size 1, one group): the first update of 32-token segments with
    --update-freq 2 (segments 0 and 1, the second run from the state the first left) has
    the loss of the first update of one 64-token block, the same tokens in one forward pass;
    attention chunks of 48 make the second segment continue a chunk the first one began.
    (The updates after the first differ: the gradient stops at segment boundaries.)"""
    whole = _first_update_loss(shakespeare_lm_data, tmp_path / "whole", 64)
    segmented = _first_update_loss(shakespeare_lm_data, tmp_path / "segmented", 32, "--update-freq", "2")
    print(f"first-update loss: one 64-token block {whole:.3f}, two 32-token segments {segmented:.3f}")
    # the simple log prints 3 decimals
    assert abs(segmented - whole) <= 1.01e-3, (segmented, whole)


@pytest.mark.slow
@pytest.mark.parametrize("options, message", [
    (["--sample-break-mode", "eos"], "--task segment_language_modeling needs --sample-break-mode none (got eos)"),
    (["--segment-groups", "0"], "--segment-groups must be a positive integer, got 0"),
], ids=["sample-break-mode-eos", "segment-groups-0"])
def test_segment_task_refuses_options_on_the_command_line(tmp_path, shakespeare_lm_data, options, message):
    args = [console_script("fairseq-train"), shakespeare_lm_data, *SEGMENT_TRAIN, *options,
            "--max-update", "1", "--save-dir", tmp_path / "ckpt"]
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, _log(result)[-3000:]
    assert f"fairseq-train: error: {message}" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()
