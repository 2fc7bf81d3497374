"""Long-context scoring with state carried across blocks (scripts/eval_lm_stateful.py and
mega_fairseq.evaluation.stateful_lm_scoring): stateful block-wise scores equal one full
forward over the whole stream, independent scores equal per-block full forwards.  The
reference forwards are written here with torch.log_softmax / fairseq's
get_normalized_probs, sharing no code with the scorer."""

import math
import re
import sys

import pytest
import torch
from fairseq.data import indexed_dataset

from conftest import REPO, console_script, run_cli
from lm_helpers import build_lm, make_dictionary, random_tokens
from mega_fairseq.evaluation.stateful_lm_scoring import (
    block_spans,
    full_forward_log_probs,
    load_token_stream,
    score_independent,
    score_stateful,
    truncate_stream,
)

ATOL = 1e-9


def _model(dictionary, **options):
    torch.manual_seed(0)
    return build_lm(dictionary, **options).double().eval()


def _stream(dictionary, length: int, seed: int = 0) -> torch.Tensor:
    """LongTensor[length]: an eos, then random tokens with a few eos line breaks."""
    stream = random_tokens(dictionary, 1, length, seed=seed)[0]
    stream[0] = dictionary.eos()
    stream[7::11] = dictionary.eos()
    return stream


def _reference_log_probs(model, stream):
    """Reference: one plain forward of stream[:-1] (1 x N-1) -> the normalised
    log-probability of each next token stream[1:] (1-D, float64).  Without an adaptive
    softmax the logits go through torch.log_softmax; with one, through fairseq's
    get_normalized_probs, which returns the full-vocabulary log-distribution."""
    inputs, targets = stream[:-1].unsqueeze(0), stream[1:].unsqueeze(0)
    with torch.no_grad():
        net_output = model(inputs)
        if model.decoder.adaptive_softmax is not None:
            lprobs = model.get_normalized_probs(net_output, log_probs=True, sample={"target": targets})
        else:
            lprobs = torch.log_softmax(net_output[0].double(), dim=-1)
    assert lprobs.shape == (1, targets.size(1), model.decoder.dictionary.__len__())
    return lprobs[0, torch.arange(targets.size(1)), targets[0]].double()


def _per_block_forwards(model, stream, block_size):
    """Reference for independent mode: every block of ``block_size`` inputs alone through
    a plain forward, predicting the token after each input."""
    pieces = []
    for start in range(0, stream.numel() - 1, block_size):
        end = min(start + block_size, stream.numel() - 1)
        pieces.append(_reference_log_probs(model, stream[start:end + 1]))
    return torch.cat(pieces)


@pytest.mark.parametrize("config", [
    dict(decoder_chunk_size=4),
    dict(decoder_chunk_size=5, truncation_length=6, attention_activation_fn="laplace"),
    dict(decoder_chunk_size=-1, rel_pos_bias="rotary"),
    dict(decoder_chunk_size=4, adaptive_softmax_cutoff="10,20"),
])
@pytest.mark.parametrize("block_size", [7, 8, 100])
def test_stateful_equals_one_full_forward(config, block_size):
    dictionary = make_dictionary(30)
    model = _model(dictionary, **config)
    stream = _stream(dictionary, 61)
    truth = _reference_log_probs(model, stream)
    # log-probabilities of a normalised distribution: a scorer returning raw logits (no
    # log-softmax normalisation) or another token's score fails the comparisons below
    assert (truth < 0).all()

    lengths = []  # tokens per call reaching the first layer: the prefix is never re-run
    handle = model.decoder.layers[0].register_forward_pre_hook(lambda _m, args: lengths.append(args[0].size(0)))
    stateful = score_stateful(model, stream, block_size, progress=False, keep_log_probs=True)
    handle.remove()
    assert lengths == [end - start for start, end in block_spans(stream.numel() - 1, block_size)]
    assert stateful.num_tokens == stream.numel() - 1 == truth.numel()
    torch.testing.assert_close(stateful.log_probs, truth, atol=ATOL, rtol=0)
    assert math.isclose(stateful.nll_nats, -truth.sum().item(), rel_tol=1e-12)


@pytest.mark.parametrize("block_size", [7, 8])
def test_independent_equals_per_block_forwards(block_size):
    dictionary = make_dictionary(30)
    model = _model(dictionary, decoder_chunk_size=4)
    stream = _stream(dictionary, 61)
    independent = score_independent(model, stream, block_size, batch_size=3, progress=False,
                                    keep_log_probs=True)
    reference = _per_block_forwards(model, stream, block_size)
    torch.testing.assert_close(independent.log_probs, reference, atol=ATOL, rtol=0)
    # the first block sees the same context in both modes, later ones do not
    stateful = score_stateful(model, stream, block_size, progress=False, keep_log_probs=True)
    torch.testing.assert_close(independent.log_probs[:block_size], stateful.log_probs[:block_size],
                               atol=ATOL, rtol=0)
    assert not torch.allclose(independent.log_probs, stateful.log_probs)
    assert independent.num_tokens == stateful.num_tokens


def test_scores_and_summary():
    dictionary = make_dictionary(30)
    model = _model(dictionary, decoder_chunk_size=4)
    stream = _stream(dictionary, 30)
    result = score_stateful(model, stream, 8, progress=False)
    reference = _reference_log_probs(model, stream)
    assert math.isclose(result.nll_nats, -reference.sum().item(), rel_tol=1e-9)
    # the library's own full-forward helper agrees with the reference written here
    torch.testing.assert_close(full_forward_log_probs(model, stream), reference, atol=ATOL, rtol=0)
    assert math.isclose(result.loss, result.nll_nats / 29 / math.log(2))
    assert math.isclose(result.perplexity, 2 ** result.loss)
    assert "stateful" in result.summary() and "tokens/s" in result.summary()


def test_unchunked_simple_bias_refused_beyond_max_positions():
    dictionary = make_dictionary(30)
    model = _model(dictionary, decoder_chunk_size=-1, tokens_per_sample=16)
    short, long = _stream(dictionary, 17), _stream(dictionary, 40)
    # a stream within the bias range is fine, and equals a full forward
    result = score_stateful(model, short, 5, progress=False, keep_log_probs=True)
    torch.testing.assert_close(result.log_probs, _reference_log_probs(model, short), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="chunked model.*rotary"):
        score_stateful(model, long, 8, progress=False)
    score_independent(model, long, 16, progress=False)  # blocks fit: fine
    with pytest.raises(ValueError, match="exceeds the model's max positions"):
        score_independent(model, long, 32, progress=False)


def test_training_mode_refused():
    dictionary = make_dictionary(30)
    model = _model(dictionary, decoder_chunk_size=4).train()
    with pytest.raises(ValueError, match="eval mode"):
        score_stateful(model, _stream(dictionary, 20), 8, progress=False)


def test_load_token_stream(tmp_path):
    dictionary = make_dictionary(30)
    lines = [torch.tensor([5, 6, 7, dictionary.eos()]), torch.tensor([8, dictionary.eos()])]
    builder = indexed_dataset.make_builder(str(tmp_path / "test.bin"), impl="mmap", vocab_size=len(dictionary))
    for line in lines:
        builder.add_item(line)
    builder.finalize(str(tmp_path / "test.idx"))

    stream = load_token_stream(str(tmp_path), "test", dictionary, progress=False)
    assert stream.tolist() == [dictionary.eos(), 5, 6, 7, dictionary.eos(), 8, dictionary.eos()]
    bare = load_token_stream(str(tmp_path), "test", dictionary, leading_eos=False, progress=False)
    assert bare.tolist() == stream.tolist()[1:]
    assert truncate_stream(stream, 3).tolist() == stream.tolist()[:4]
    with pytest.raises(FileNotFoundError):
        load_token_stream(str(tmp_path), "valid", dictionary, progress=False)


# ------------------------------------------------------------------- end to end
def _scores(output: str):
    """{mode: (tokens, loss)} from the script's summary lines."""
    found = re.findall(r"(independent|stateful): (\d+) tokens \| loss \(base 2\) ([0-9.]+)", output)
    return {mode: (int(tokens), float(loss)) for mode, tokens, loss in found}


@pytest.mark.slow
def test_script_end_to_end(tmp_path, shakespeare_lm_data):
    from test_cli_mega_lm import TRAIN

    save = tmp_path / "ckpt"
    run_cli([console_script("fairseq-train"), shakespeare_lm_data, *TRAIN, "--max-update", "30",
             "--save-dir", save])
    checkpoint = save / "checkpoint_last.pt"
    script = [sys.executable, REPO / "scripts" / "eval_lm_stateful.py", shakespeare_lm_data,
              "--path", checkpoint, "--cpu", "--no-progress-bar"]

    result = run_cli(script + ["--user-dir", REPO / "mega_fairseq"])  # block = tokens_per_sample = 64
    scores = _scores(result.stdout)
    assert set(scores) == {"independent", "stateful"}, result.stdout
    assert scores["independent"][0] == scores["stateful"][0] > 1000

    # independent mode with the training block size is what fairseq-eval-lm computes
    evaluated = run_cli([console_script("fairseq-eval-lm"), shakespeare_lm_data, "--user-dir", REPO / "mega_fairseq",
                         "--path", checkpoint, "--gen-subset", "test", "--cpu", "--tokens-per-sample", "64",
                         "--batch-size", "8"])
    log = evaluated.stdout + evaluated.stderr
    evaluated_tokens = re.search(r"Evaluated ([0-9,]+) tokens", log).group(1).replace(",", "")
    assert int(evaluated_tokens) == scores["independent"][0]
    fairseq_loss = float(re.search(r"Loss \(base 2\): ([0-9.]+)", log).group(1))
    assert abs(fairseq_loss - scores["independent"][1]) < 2e-4, (fairseq_loss, scores)

    # carried state makes the stateful score independent of the block size
    small_blocks = _scores(run_cli(script + ["--block-size", "24", "--modes", "stateful"]).stdout)
    assert abs(small_blocks["stateful"][1] - scores["stateful"][1]) < 2e-4, (small_blocks, scores)

    limited = _scores(run_cli(script + ["--max-tokens-total", "100"]).stdout)
    assert limited["independent"][0] == limited["stateful"][0] == 100
