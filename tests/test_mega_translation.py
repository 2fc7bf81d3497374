"""The ``mega`` encoder-decoder: incremental decoding == full forward, padding invariance of
the encoder, bidirectionality, shared embeddings and clear errors for bad options."""

import pytest
import torch

from lm_helpers import make_dictionary
from mt_helpers import build_translation_model, padded_batch, random_sentence

CONFIGS = [
    dict(attention_activation_fn=act, rel_pos_bias=bias, decoder_chunk_size=chunk,
         encoder_chunk_size=chunk, normalize_before=prenorm)
    for act in ("softmax", "laplace", "relu2")
    for bias in ("simple", "rotary")
    for chunk, prenorm in ((-1, False), (4, True))
]


def _config_id(config):
    return "-".join(str(v) for v in config.values())


def _sources_and_targets(dictionary):
    """Left-padded sources of different lengths and right-padded prev_output_tokens."""
    sources = [random_sentence(dictionary, n, seed) for n, seed in ((9, 1), (5, 2), (7, 3))]
    targets = [random_sentence(dictionary, n, seed) for n, seed in ((8, 4), (10, 5), (6, 6))]
    src_tokens = padded_batch(sources, dictionary.pad(), left=True)
    prev_output_tokens = padded_batch(
        [torch.cat([torch.tensor([dictionary.eos()]), t[:-1]]) for t in targets],
        dictionary.pad(), left=False)
    lengths = torch.tensor([len(s) for s in sources])
    return src_tokens, lengths, prev_output_tokens, targets


def _log_probs(model, net_output):
    return model.get_normalized_probs(net_output, log_probs=True)


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_incremental_decoding_matches_full_forward(config):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_translation_model(dictionary, **config).double().eval()
    src_tokens, src_lengths, prev, _ = _sources_and_targets(dictionary)
    with torch.no_grad():
        full = _log_probs(model, model(src_tokens, src_lengths, prev))
        encoder_out = model.encoder(src_tokens, src_lengths)
        state, steps = {}, []
        for t in range(prev.size(1)):
            out = model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)
            steps.append(_log_probs(model, out))
        stepwise = torch.cat(steps, dim=1)
        state, blocks = {}, []
        for end in (2, 3, 7, prev.size(1)):
            out = model.decoder(prev[:, :end], encoder_out=encoder_out, incremental_state=state)
            blocks.append(_log_probs(model, out))
        blockwise = torch.cat(blocks, dim=1)
    real = prev.ne(dictionary.pad())  # padded target positions are never scored
    torch.testing.assert_close(stepwise[real], full[real], atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(blockwise[real], full[real], atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("chunk", [-1, 3])
@pytest.mark.parametrize("left_pad", [True, False])
@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_padded_batch_matches_sentences_alone(chunk, left_pad, norm):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_translation_model(dictionary, encoder_chunk_size=chunk, decoder_chunk_size=chunk,
                                    normalization_type=norm).double().eval()
    src_tokens, src_lengths, prev, targets = _sources_and_targets(dictionary)
    if not left_pad:
        src_tokens = padded_batch([s[s.ne(dictionary.pad())] for s in src_tokens],
                                  dictionary.pad(), left=False)
    with torch.no_grad():
        together = _log_probs(model, model(src_tokens, src_lengths, prev))
        encoded = model.encoder(src_tokens, src_lengths)
        for i in range(src_tokens.size(0)):
            source = src_tokens[i][src_tokens[i].ne(dictionary.pad())].unsqueeze(0)
            target = prev[i, : len(targets[i])].unsqueeze(0)
            alone = _log_probs(model, model(source, src_lengths[i : i + 1], target))
            torch.testing.assert_close(together[i, : len(targets[i])], alone[0])
            # encoder outputs are right-aligned whatever the input padding
            enc_alone = model.encoder(source, src_lengths[i : i + 1])["encoder_out"][0][:, 0]
            torch.testing.assert_close(encoded["encoder_out"][0][: source.size(1), i], enc_alone)
            assert not encoded["encoder_padding_mask"][0][i, : source.size(1)].any()
            assert encoded["encoder_padding_mask"][0][i, source.size(1):].all()


@pytest.mark.parametrize("chunk", [-1, 4])
def test_encoder_is_bidirectional(chunk):
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_translation_model(dictionary, encoder_chunk_size=chunk).double().eval()
    source = random_sentence(dictionary, 12, seed=1).unsqueeze(0)
    changed = source.clone()
    changed[0, -2] = dictionary.nspecial + (int(source[0, -2]) - dictionary.nspecial + 1) % 20
    with torch.no_grad():
        before = model.encoder(source)["encoder_out"][0]
        after = model.encoder(changed)["encoder_out"][0]
    # a change near the end reaches the first position (through the EMA even when chunked)
    assert (before[0] - after[0]).abs().max() > 1e-6


def test_reorder_encoder_out_selects_batch_entries():
    torch.manual_seed(0)
    dictionary = make_dictionary(24)
    model = build_translation_model(dictionary).eval()
    src_tokens, src_lengths, _, _ = _sources_and_targets(dictionary)
    encoder_out = model.encoder(src_tokens, src_lengths, return_all_hiddens=True)
    order = torch.tensor([2, 2, 0])
    reordered = model.encoder.reorder_encoder_out(encoder_out, order)
    for name, dim in (("encoder_out", 1), ("encoder_padding_mask", 0), ("encoder_embedding", 0),
                      ("encoder_states", 1), ("src_lengths", 0)):
        for original, selected in zip(encoder_out[name], reordered[name]):
            assert torch.equal(selected, original.index_select(dim, order)), name
    assert len(reordered["encoder_states"]) == 2


def test_embeddings_scaled_padding_zero_and_final_norms():
    dictionary = make_dictionary(24)
    model = build_translation_model(dictionary, normalize_before=True)
    for stack in (model.encoder, model.decoder):
        assert torch.all(stack.embed_tokens.weight[dictionary.pad()] == 0)
        assert stack.embed_scale == pytest.approx(16 ** 0.5)
        assert stack.final_norm is not None
    post = build_translation_model(dictionary, no_scale_embedding=True)
    assert post.encoder.embed_scale == post.decoder.embed_scale == 1.0
    assert post.encoder.final_norm is None and post.decoder.final_norm is None


def test_shared_embeddings():
    dictionary = make_dictionary(24)
    shared = build_translation_model(dictionary, share_all_embeddings=True)
    assert shared.encoder.embed_tokens is shared.decoder.embed_tokens
    assert shared.decoder.output_projection.weight is shared.encoder.embed_tokens.weight
    tied = build_translation_model(dictionary, make_dictionary(30), share_decoder_input_output_embed=True)
    assert tied.decoder.output_projection.weight is tied.decoder.embed_tokens.weight
    assert tied.encoder.embed_tokens.weight.size(0) != tied.decoder.embed_tokens.weight.size(0)
    separate = build_translation_model(dictionary, make_dictionary(30))
    assert separate.decoder.output_projection.weight is not separate.decoder.embed_tokens.weight


def test_bad_options_are_refused_clearly():
    with pytest.raises(ValueError, match="--share-all-embeddings requires a joined dictionary"):
        build_translation_model(make_dictionary(24), make_dictionary(30), share_all_embeddings=True)
    with pytest.raises(ValueError, match="--encoder-embed-dim to equal --decoder-embed-dim"):
        build_translation_model(share_all_embeddings=True, decoder_embed_dim=32)
    with pytest.raises(ValueError, match="--max-source-positions must be a positive integer"):
        build_translation_model(max_source_positions=0)


def test_source_longer_than_max_positions_raises_clearly():
    dictionary = make_dictionary(24)
    model = build_translation_model(dictionary, max_source_positions=8, max_target_positions=8).eval()
    assert model.max_positions() == (8, 8)
    source = random_sentence(dictionary, 12, seed=1).unsqueeze(0)
    with pytest.raises(ValueError, match="exceeds max_positions=8"):
        model(source, torch.tensor([12]), torch.full((1, 3), dictionary.eos()))
