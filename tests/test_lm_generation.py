"""Generation with ``mega_lm`` through fairseq's SequenceGenerator: the incremental state
(EMA recurrent state + attention cache) is used, the prefix is never re-run, and the
hypotheses equal those of a reference that recomputes the whole prefix at every step."""

import pytest
import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator

from lm_helpers import build_lm, make_dictionary, random_tokens


def _generator(model, dictionary, **options):
    defaults = dict(beam_size=3, max_len_b=14, min_len=14)
    defaults.update(options)
    return SequenceGenerator([model], dictionary, **defaults)


def _generate(generator, prefix, bos):
    sample = {"net_input": {"src_tokens": prefix, "src_lengths": torch.full((prefix.size(0),), prefix.size(1))}}
    return generator.generate([generator.model.single_model], sample, prefix_tokens=prefix, bos_token=bos)


def _record_block_lengths(model):
    lengths = []
    handle = model.decoder.layers[0].register_forward_pre_hook(lambda _m, args: lengths.append(args[0].size(0)))
    return lengths, handle


@pytest.mark.parametrize("chunk", [-1, 4])
def test_beam_search_runs_one_token_per_step(chunk):
    torch.manual_seed(0)
    dictionary = make_dictionary(30)
    model = build_lm(dictionary, decoder_chunk_size=chunk).eval()
    prefix = random_tokens(dictionary, 2, 3)
    lengths, handle = _record_block_lengths(model)
    _generate(_generator(model, dictionary), prefix, dictionary.eos())
    handle.remove()
    assert lengths and set(lengths) == {1}, lengths


@pytest.mark.parametrize("config", [
    dict(decoder_chunk_size=-1, attention_activation_fn="softmax"),
    dict(decoder_chunk_size=4, attention_activation_fn="laplace", rel_pos_bias="rotary"),
])
def test_beam_search_equals_prefix_recomputation(config):
    torch.manual_seed(0)
    dictionary = make_dictionary(30)
    model = build_lm(dictionary, **config).double().eval()
    prefix = random_tokens(dictionary, 2, 3)

    incremental = _generate(_generator(model, dictionary), prefix, dictionary.eos())
    recompute_generator = _generator(model, dictionary)
    recompute_generator.model.has_incremental = False  # forward_decoder re-runs the prefix
    lengths, handle = _record_block_lengths(model)
    recomputed = _generate(recompute_generator, prefix, dictionary.eos())
    handle.remove()
    assert max(lengths) > 1  # the reference really recomputed prefixes

    for hyps_a, hyps_b in zip(incremental, recomputed):
        assert [h["tokens"].tolist() for h in hyps_a] == [h["tokens"].tolist() for h in hyps_b]
        for a, b in zip(hyps_a, hyps_b):
            torch.testing.assert_close(a["score"], b["score"])
            torch.testing.assert_close(a["positional_scores"], b["positional_scores"])


def test_sampling_uses_incremental_state():
    torch.manual_seed(0)
    dictionary = make_dictionary(30)
    model = build_lm(dictionary, decoder_chunk_size=4).double().eval()
    prefix = random_tokens(dictionary, 2, 3)
    lengths, handle = _record_block_lengths(model)
    hypos = _generate(_generator(model, dictionary, beam_size=1,
                                   search_strategy=search.Sampling(dictionary, sampling_topk=5)), prefix,
                      dictionary.eos())
    handle.remove()
    assert set(lengths) == {1}
    # min_len == max_len_b == 14 fixes the length: 14 tokens (the 3 prefix tokens first),
    # then the eos forced at the last step, and eos nowhere before; catches a generator
    # that ignores the prefix, stops early or runs past max_len
    for row, hyp in zip(prefix.tolist(), hypos):
        tokens = hyp[0]["tokens"].tolist()
        assert len(tokens) == 15 and tokens[:3] == row, tokens
        assert tokens[-1] == dictionary.eos() and dictionary.eos() not in tokens[:-1], tokens
        # every sampled token is among the 5 most likely under one full forward of the
        # sequence (pad and eos excluded, as the generator masks them before min_len):
        # catches incremental decoding whose carried state gives other next-token scores
        with torch.no_grad():
            logits = model(torch.tensor([tokens[:-1]]))[0][0]
        logits[:, [dictionary.pad(), dictionary.eos()]] = float("-inf")
        for position in range(3, 14):
            top5 = logits[position - 1].topk(5).indices.tolist()
            assert tokens[position] in top5, (position, tokens, top5)
