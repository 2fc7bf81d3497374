"""A whole Mega block (gated attention [+ cross-attention] + normalized FFN)."""

import pytest
import torch

from incremental_helpers import reorder_all
from mega_fairseq.modules.mega_layer import MegaLayer, MegaLayerSettings

C = 8


def _layer(**options):
    torch.manual_seed(0)
    settings = dict(embed_dim=C, zdim=4, hdim=12, ndim=3, ffn_hidden_dim=10, causal=True)
    settings.update(options)
    return MegaLayer(MegaLayerSettings(**settings)).double().eval()


@pytest.mark.parametrize("chunk", [-1, 3])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_decoder_block_incremental_equals_full(chunk, norm):
    layer = _layer(cross_attention=True, chunk_size=chunk, norm_type=norm, prenorm=(norm == "layernorm"))
    x = torch.randn(7, 2, C, dtype=torch.float64)
    encoder_out = torch.randn(5, 2, C, dtype=torch.float64)
    encoder_padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    full, _ = layer(x, encoder_out=encoder_out, encoder_padding_mask=encoder_padding)
    state, steps = {}, []
    for t in range(7):
        out, _ = layer(x[t : t + 1], encoder_out=encoder_out, encoder_padding_mask=encoder_padding,
                       incremental_state=state, start_position=t)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps), full)


def test_decoder_block_reorder_prunes_and_duplicates():
    layer = _layer(cross_attention=True, chunk_size=3)
    x = torch.randn(6, 3, C, dtype=torch.float64)
    encoder_out = torch.randn(4, 3, C, dtype=torch.float64)
    order = torch.tensor([2, 2, 0])
    state = {}
    for t in range(3):
        layer(x[t : t + 1], encoder_out=encoder_out, incremental_state=state, start_position=t)
    reorder_all(layer, state, order)
    continued = torch.cat([
        layer(x[t : t + 1, order], encoder_out=encoder_out[:, order], incremental_state=state,
              start_position=t)[0]
        for t in range(3, 6)
    ])
    full, _ = layer(x[:, order], encoder_out=encoder_out[:, order])
    torch.testing.assert_close(continued, full[3:])


@pytest.mark.parametrize("chunk", [-1, 4])
def test_encoder_block_padding_invariant(chunk):
    layer = _layer(causal=False, chunk_size=chunk, norm_type="batchnorm")
    long = torch.randn(8, 1, C, dtype=torch.float64)
    short = torch.randn(5, 1, C, dtype=torch.float64)
    batch = torch.cat([long, torch.cat([short, torch.randn(3, 1, C, dtype=torch.float64)])], dim=1)
    padding = torch.zeros(2, 8, dtype=torch.bool)
    padding[1, 5:] = True
    together, _ = layer(batch, padding_mask=padding)
    torch.testing.assert_close(together[:5, 1:], layer(short)[0])
    torch.testing.assert_close(together[:, :1], layer(long)[0])


def test_cross_attention_block_needs_encoder_out():
    with pytest.raises(ValueError, match="encoder_out"):
        _layer(cross_attention=True)(torch.randn(3, 1, C, dtype=torch.float64))


@pytest.mark.parametrize("bias", ["simple", "rotary"])
@pytest.mark.parametrize("activation", ["softmax", "laplace"])
def test_decoder_block_left_padded_source_equals_source_alone(bias, activation):
    """fairseq left-pads sources: key positions count from the first real source token,
    so a padded source gives the same outputs as the source alone (also when decoding)."""
    layer = _layer(cross_attention=True, rel_pos_bias=bias, attention_activation=activation)
    with torch.no_grad():  # a bias that varies strongly with the offset exposes any shift
        for parameter in layer.cross_attn.rel_pos_bias.parameters():
            parameter.copy_(2.0 * torch.randn_like(parameter))
    x = torch.randn(4, 2, C, dtype=torch.float64)
    source = torch.randn(6, 2, C, dtype=torch.float64)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, :2] = True
    together, _ = layer(x, encoder_out=source, encoder_padding_mask=padding)
    alone, _ = layer(x[:, 1:], encoder_out=source[2:, 1:])
    torch.testing.assert_close(together[:, 1:], alone)
    state = {}
    steps = torch.cat([layer(x[t : t + 1], encoder_out=source, encoder_padding_mask=padding,
                             incremental_state=state, start_position=t)[0] for t in range(4)])
    torch.testing.assert_close(steps, together)


@pytest.mark.parametrize("prenorm", [True, False])
def test_decoder_block_batch_norm_ignores_padded_targets_in_training(prenorm):
    """Training-mode batch norms in every sub-layer, cross-attention included, take their
    statistics from real target positions: the values at padded ones do not reach the
    real outputs."""
    layer = _layer(cross_attention=True, norm_type="batchnorm", prenorm=prenorm).train()
    target_padding = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    x = torch.randn(6, 2, C, dtype=torch.float64)
    other = x.masked_fill(target_padding.t().unsqueeze(-1), 40.0)
    encoder_out = torch.randn(5, 2, C, dtype=torch.float64)
    encoder_padding = torch.tensor([[False] * 5, [False] * 2 + [True] * 3])
    kwargs = dict(padding_mask=target_padding, encoder_out=encoder_out, encoder_padding_mask=encoder_padding)
    out, _ = layer(x, **kwargs)
    out_other, _ = layer(other, **kwargs)
    real = ~target_padding.t()
    torch.testing.assert_close(out_other[real], out[real])
