"""The chunk size and the EMA truncation mean the same thing at every entry point: None,
0 or -1 are off, a positive integer is the length, anything else is refused with the
option's name (layers: the argument; model options: the command-line option; the Hugging
Face mapping)."""

import pytest

from lm_helpers import build_lm
from mega_fairseq.conversion.hf_mega import hf_config_kwargs
from mega_fairseq.modules.ema import MultiDimensionalDampedEMA
from mega_fairseq.modules.gated_attention import MovingAverageGatedAttention
from mega_fairseq.modules.length_options import optional_length
from mega_fairseq.modules.mega_layer import MegaLayerSettings


@pytest.mark.parametrize("value, expected", [(None, None), (0, None), (-1, None), (1, 1), (64, 64)])
def test_off_and_on_values(value, expected):
    assert optional_length("--x", value) == expected


@pytest.mark.parametrize("value", [-2, -5, 2.5, "8", True])
def test_other_values_are_refused_naming_the_option(value):
    with pytest.raises(ValueError, match="--decoder-chunk-size must be a positive integer, or -1 or 0"):
        optional_length("--decoder-chunk-size", value)


def _attention(**options):
    return MovingAverageGatedAttention(8, 4, 6, 2, causal=True, **options)


@pytest.mark.parametrize("off", [None, 0, -1])
def test_every_entry_point_reads_off_the_same_way(off):
    attention = _attention(chunk_size=off, truncation=off)
    assert attention.chunk_size == -1 and not attention.chunked and attention.truncation is None
    assert MultiDimensionalDampedEMA(8, 2, truncation=off).truncation is None
    model = build_lm(decoder_chunk_size=off if off is not None else -1, truncation_length=off)
    layer = model.decoder.layers[0].self_attn
    assert layer.chunk_size == -1 and layer.ema.truncation is None
    settings = MegaLayerSettings(embed_dim=8, zdim=4, hdim=6, ndim=2, ffn_hidden_dim=8, causal=True,
                                 chunk_size=-1 if off is None else off)
    assert hf_config_kwargs(settings)["use_chunking"] is False


def test_every_entry_point_refuses_a_negative_length():
    with pytest.raises(ValueError, match="chunk_size must be"):
        _attention(chunk_size=-5)
    with pytest.raises(ValueError, match="truncation must be"):
        MultiDimensionalDampedEMA(8, 2, truncation=-5)
    with pytest.raises(ValueError, match="--decoder-chunk-size must be"):
        build_lm(decoder_chunk_size=-5)
    with pytest.raises(ValueError, match="--truncation-length must be"):
        build_lm(truncation_length=-5)
    with pytest.raises(ValueError, match="chunk_size must be"):
        MegaLayerSettings(embed_dim=8, zdim=4, hdim=6, ndim=2, ffn_hidden_dim=8, causal=True,
                          chunk_size=-5)
