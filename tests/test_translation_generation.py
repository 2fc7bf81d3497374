"""Beam search with the ``mega`` encoder-decoder through fairseq's SequenceGenerator: the
incremental state is used (one new target token per step, encoder and cross-attention
keys/values computed once per sentence), beam reordering and finished-sentence pruning keep
every cached tensor aligned, and the hypotheses and scores equal those of a reference that
re-runs the whole prefix at every step."""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from lm_helpers import make_dictionary
from mt_helpers import build_translation_model, padded_batch, random_sentence


def _sample(dictionary, lengths=(9, 4, 7, 6, 3, 8), seed=0):
    sources = [random_sentence(dictionary, n, seed + i) for i, n in enumerate(lengths)]
    src_tokens = padded_batch(sources, dictionary.pad(), left=True)
    return {"net_input": {"src_tokens": src_tokens, "src_lengths": torch.tensor(lengths)}}


def _generate(model, dictionary, sample, incremental=True, **options):
    settings = dict(beam_size=4, max_len_a=0, max_len_b=12)
    settings.update(options)
    generator = SequenceGenerator([model], dictionary, **settings)
    if not incremental:
        generator.model.has_incremental = False  # forward_decoder re-runs the whole prefix
    return generator.generate([model], sample)


def _make_hypotheses_differ(model, dictionary, cross_std=0.5, eos_scale=2.0):
    """At initialisation the cross-attention barely reaches the output and EOS is rare, so
    all sentences get the same hypotheses of maximal length. Larger cross-attention weights
    and EOS output row make sentences finish at different steps: the generator then
    prunes finished sentences from the batch."""
    with torch.no_grad():
        for layer in model.decoder.layers:
            attention = layer.cross_attn
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.h_proj):
                projection.weight.normal_(0.0, cross_std)
        weight = model.decoder.output_projection.weight
        weight[dictionary.eos()] *= eos_scale


class _Recorder:
    """Records decoder block input lengths, encoder calls, cross-attention key projections
    and the batch sizes passed to reorder_incremental_state."""

    def __init__(self, model):
        self.block_lengths, self.encoder_calls, self.key_projections, self.reorders = [], [], [], []
        self.handles = [
            model.decoder.layers[0].register_forward_pre_hook(
                lambda _m, args: self.block_lengths.append(args[0].size(0))),
            model.encoder.layers[0].register_forward_pre_hook(lambda *_: self.encoder_calls.append(1)),
            model.decoder.layers[0].cross_attn.k_proj.register_forward_pre_hook(
                lambda _m, args: self.key_projections.append(args[0].shape)),
        ]
        original = model.decoder.reorder_incremental_state_scripting

        def reorder(state, new_order):
            self.reorders.append(len(new_order))
            return original(state, new_order)

        model.decoder.reorder_incremental_state_scripting = reorder

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("config", [
    dict(),
    dict(decoder_chunk_size=3, encoder_chunk_size=4, attention_activation_fn="laplace"),
    dict(rel_pos_bias="rotary", attention_activation_fn="relu2", normalize_before=True),
    dict(truncation_length=4, normalization_type="rmsnorm"),
], ids=["softmax", "chunked-laplace", "rotary-relu2-prenorm", "truncated-rmsnorm"])
def test_beam_search_equals_prefix_recomputation(config):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_translation_model(dictionary, **config).double().eval()
    _make_hypotheses_differ(model, dictionary)
    sample = _sample(dictionary)

    recorder = _Recorder(model)
    incremental = _generate(model, dictionary, sample)
    recorder.remove()
    assert set(recorder.block_lengths) == {1}  # never re-runs the prefix
    assert len(recorder.encoder_calls) == 1
    assert len(recorder.key_projections) == 1  # cross-attention keys once per sentence
    # beams were reordered, and finished sentences pruned from the batch (fewer rows)
    assert recorder.reorders and min(recorder.reorders) < 4 * 6, recorder.reorders

    recorder = _Recorder(model)
    recomputed = _generate(model, dictionary, sample, incremental=False)
    recorder.remove()
    assert max(recorder.block_lengths) > 1  # the reference really re-ran prefixes

    lengths = set()
    for hyps_a, hyps_b in zip(incremental, recomputed):
        assert len(hyps_a) == len(hyps_b) == 4
        for a, b in zip(hyps_a, hyps_b):
            assert torch.equal(a["tokens"], b["tokens"])
            torch.testing.assert_close(a["score"], b["score"], atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(a["positional_scores"], b["positional_scores"],
                                       atol=1e-9, rtol=1e-9)
            lengths.add(len(a["tokens"]))
    assert len(lengths) > 1  # sentences finished at different steps


def test_generation_honours_max_target_positions():
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_translation_model(dictionary, max_source_positions=16, max_target_positions=6).eval()
    assert model.max_decoder_positions() == 6
    hypotheses = _generate(model, dictionary, _sample(dictionary), max_len_b=200)
    assert max(len(h["tokens"]) for hyps in hypotheses for h in hyps) <= 6
