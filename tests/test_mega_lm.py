"""``mega_lm``: incremental decoding == full forward, padding invariance, options."""

import pytest
import torch

from lm_helpers import build_lm, make_dictionary, random_tokens

CONFIGS = [
    dict(attention_activation_fn=act, rel_pos_bias=bias, decoder_chunk_size=chunk)
    for act in ("softmax", "laplace", "relu2")
    for bias in ("simple", "rotary")
    for chunk in (-1, 4)
]


def _config_id(config):
    return "-".join(str(v) for v in config.values())


def _log_probs(model, tokens, **kwargs):
    net_output = model(tokens, **kwargs)
    return model.get_normalized_probs(net_output, log_probs=True)


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_incremental_decoding_matches_full_forward(config):
    torch.manual_seed(0)
    dictionary = make_dictionary()
    model = build_lm(dictionary, **config).double().eval()
    tokens = random_tokens(dictionary, batch=3, length=11)
    with torch.no_grad():
        full = _log_probs(model, tokens)
        state = {}
        steps = []
        for t in range(tokens.size(1)):
            steps.append(_log_probs(model, tokens[:, : t + 1], incremental_state=state)[:, -1:])
        stepwise = torch.cat(steps, dim=1)
        # blocks of several new tokens at once (e.g. scoring a prefix, then continuing)
        # only the tokens not decoded yet are run, so each call returns just those
        state, blocks = {}, []
        for end in (3, 4, 9, 11):
            blocks.append(_log_probs(model, tokens[:, :end], incremental_state=state))
        blockwise = torch.cat(blocks, dim=1)
    torch.testing.assert_close(stepwise, full, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(blockwise, full, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("activation", ["softmax", "laplace", "relu2"])
def test_left_padded_batch_matches_sequences_alone(activation):
    torch.manual_seed(0)
    dictionary = make_dictionary()
    model = build_lm(dictionary, attention_activation_fn=activation).double().eval()
    long = random_tokens(dictionary, 1, 9, seed=1)
    short = random_tokens(dictionary, 1, 5, seed=2)
    batch = torch.cat([long, torch.cat([torch.full((1, 4), dictionary.pad()), short], dim=1)])
    with torch.no_grad():
        together = _log_probs(model, batch)
        torch.testing.assert_close(together[:1], _log_probs(model, long))
        torch.testing.assert_close(together[1:, 4:], _log_probs(model, short))


@pytest.mark.parametrize("chunk", [-1, 4])
def test_right_padded_batch_matches_sequences_alone(chunk):
    torch.manual_seed(0)
    dictionary = make_dictionary()
    model = build_lm(dictionary, decoder_chunk_size=chunk, attention_activation_fn="laplace").double().eval()
    long = random_tokens(dictionary, 1, 10, seed=1)
    short = random_tokens(dictionary, 1, 6, seed=2)
    batch = torch.cat([long, torch.cat([short, torch.full((1, 4), dictionary.pad())], dim=1)])
    with torch.no_grad():
        together = _log_probs(model, batch)
        torch.testing.assert_close(together[1:, :6], _log_probs(model, short))


def test_embeddings_scaled_padding_zero_and_final_norm():
    dictionary = make_dictionary()
    model = build_lm(dictionary, normalize_before=True)
    decoder = model.decoder
    assert torch.all(decoder.embed_tokens.weight[dictionary.pad()] == 0)
    assert decoder.embed_scale == pytest.approx(16 ** 0.5)
    assert decoder.final_norm is not None
    assert build_lm(dictionary, no_scale_embedding=True).decoder.embed_scale == 1.0
    assert build_lm(dictionary, normalize_before=False).decoder.final_norm is None


def test_shared_input_output_embeddings():
    model = build_lm(share_decoder_input_output_embed=True)
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight


def test_simple_bias_rejects_samples_longer_than_max_positions():
    with pytest.raises(ValueError, match="--tokens-per-sample 128 exceeds --max-target-positions 64"):
        build_lm(tokens_per_sample=128, max_target_positions=64)
    # rotary bias and chunked attention are not limited
    build_lm(tokens_per_sample=128, max_target_positions=64, rel_pos_bias="rotary")
    build_lm(tokens_per_sample=128, max_target_positions=64, decoder_chunk_size=16)
