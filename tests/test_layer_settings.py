"""The settings contract: ``MegaLayerSettings`` normalises and validates every option once
and answers how long an input may be; every model and tool asks it (through the stack
settings and ``max_positions()``) instead of re-deriving the answer."""

from types import SimpleNamespace

import pytest

from lm_helpers import build_lm, make_dictionary
from mega_fairseq.errors import OptionError
from mega_fairseq.evaluation.stateful_lm_scoring import unchunked_position_limit
from mega_fairseq.models.mega_encoder_model import MegaEncoderModel, MegaEncoderModelConfig
from mega_fairseq.models.mega_lm import MegaLanguageModelConfig
from mega_fairseq.models.mega_options import stack_settings
from mega_fairseq.modules.layer_settings import InvalidSetting, MegaLayerSettings
from mega_fairseq.tasks.model_limits import check_model_accepts, model_length_limit
from mt_helpers import build_translation_model

UNLIMITED = int(1e6)


def settings(**options) -> MegaLayerSettings:
    return MegaLayerSettings(**dict(dict(embed_dim=8, zdim=4, hdim=6, ndim=2, ffn_hidden_dim=8,
                                         causal=True, max_positions=32), **options))


@pytest.mark.parametrize("off", [None, 0, -1])
def test_lengths_are_stored_normalised(off):
    s = settings(chunk_size=off, truncation=off)
    assert s.chunk_size is None and s.truncation is None and not s.chunked
    s = settings(chunk_size=8, truncation=16)
    assert (s.chunk_size, s.truncation, s.chunked) == (8, 16, True)


@pytest.mark.parametrize("options, limit", [
    (dict(), 32),                                             # unchunked simple bias
    (dict(chunk_size=8, max_positions=8), None),              # chunked: any length
    (dict(rel_pos_bias="rotary"), None),                      # rotary: any length
    (dict(cross_attention=True, cross_max_positions=20), 20),  # the cross bias limits too
    (dict(cross_attention=True, chunk_size=8, max_positions=8, cross_max_positions=40), 40),
    (dict(cross_attention=True, rel_pos_bias="rotary", cross_max_positions=40), None),
])
def test_length_limit(options, limit):
    assert settings(**options).length_limit == limit


def test_bad_settings_name_the_field_and_options_name_the_option():
    with pytest.raises(InvalidSetting, match="^zdim must be a positive integer, got 0$"):
        settings(zdim=0)
    with pytest.raises(InvalidSetting, match=r"rel_pos_bias rotary needs an even zdim, got 5"):
        settings(rel_pos_bias="rotary", zdim=5)
    with pytest.raises(InvalidSetting, match="attention_activation must be one of"):
        settings(attention_activation="sigmoid")
    with pytest.raises(InvalidSetting, match="bidirectional must be False for a causal block"):
        settings(bidirectional=True)
    with pytest.raises(OptionError, match="--attention-activation-fn must be one of"):
        stack_settings(MegaLanguageModelConfig(attention_activation_fn="sigmoid"),
                       "decoder", 64)


def test_each_model_answers_its_length_from_the_settings():
    dictionary = make_dictionary()
    # language models: limited by the blocks only
    assert build_lm(tokens_per_sample=48).max_positions() == 48
    assert build_lm(decoder_chunk_size=16).max_positions() == UNLIMITED
    assert build_lm(rel_pos_bias="rotary").max_positions() == UNLIMITED
    with pytest.raises(OptionError, match="--tokens-per-sample 64 exceeds --max-target-positions 32"):
        build_lm(max_target_positions=32)
    # translation and encoders: the declared positions
    model = build_translation_model(max_source_positions=40, max_target_positions=30,
                                    rel_pos_bias="rotary")
    assert model.max_positions() == (40, 30)
    task = SimpleNamespace(source_dictionary=dictionary)
    cfg = MegaEncoderModelConfig(encoder_embed_dim=8, encoder_hidden_dim=8, encoder_ffn_embed_dim=8,
                                 encoder_z_dim=4, encoder_n_dim=2, encoder_layers=1,
                                 encoder_chunk_size=8, max_positions=24)
    encoder = MegaEncoderModel.build_model(cfg, task)
    assert encoder.max_positions() == 24
    assert encoder.encoder.settings.layer.max_positions == 8  # the bias covers one chunk
    assert model_length_limit(encoder) == 24 and model_length_limit(build_lm(decoder_chunk_size=16)) is None
    with pytest.raises(OptionError, match="accepts 24 positions, fewer than --max-positions=25"):
        check_model_accepts(encoder, 25, "--max-positions=25")


def test_stateful_scoring_reads_the_block_limit():
    assert unchunked_position_limit(build_lm(tokens_per_sample=48)) == 48
    assert unchunked_position_limit(build_lm(decoder_chunk_size=16)) is None
    assert unchunked_position_limit(build_lm(rel_pos_bias="rotary")) is None
