"""One Mega block: moving-average gated attention, optional gated cross-attention, and a
normalized feed-forward network.

Encoders use ``causal=False`` (bidirectional EMA, full attention); decoders and language
models use ``causal=True`` (unidirectional EMA, causal attention, incremental decoding);
translation decoders add ``cross_attention=True``.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch.nn as nn
from torch import Tensor

from mega_fairseq.modules.gated_attention import MovingAverageGatedAttention
from mega_fairseq.modules.gated_cross_attention import GatedCrossAttention
from mega_fairseq.modules.incremental import IncrementalState
from mega_fairseq.modules.normalized_ffn import NormalizedFeedForwardNetwork


@dataclass
class MegaLayerSettings:
    """Everything one Mega block needs; built from model options by
    :func:`mega_fairseq.models.mega_options.layer_settings`."""

    embed_dim: int
    zdim: int
    hdim: int
    ndim: int
    ffn_hidden_dim: int
    causal: bool
    cross_attention: bool = False
    bidirectional: Optional[bool] = None
    dropout: float = 0.0
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    activation_dropout: float = 0.0
    feature_dropout: bool = False
    activation: str = "silu"
    attention_activation: str = "softmax"
    norm_type: str = "layernorm"
    prenorm: bool = True
    norm_affine: bool = True
    rel_pos_bias: str = "simple"
    max_positions: int = 1024
    # positions the cross-attention bias covers (queries: target, keys: source); None: max_positions
    cross_max_positions: Optional[int] = None
    chunk_size: int = -1
    truncation: Optional[int] = None


class MegaLayer(nn.Module):
    """A Mega block over ``T x B x C`` inputs."""

    def __init__(self, settings: MegaLayerSettings):
        super().__init__()
        s = settings
        self.settings = settings
        # options the self-attention, cross-attention and FFN sub-layers have in common
        sublayer = dict(
            embed_dim=s.embed_dim,
            dropout=s.dropout,
            activation=s.activation,
            norm_type=s.norm_type,
            prenorm=s.prenorm,
            norm_affine=s.norm_affine,
            feature_dropout=s.feature_dropout,
        )
        attention = dict(
            sublayer,
            zdim=s.zdim,
            attention_dropout=s.attention_dropout,
            hidden_dropout=s.hidden_dropout,
            attention_activation=s.attention_activation,
            rel_pos_bias=s.rel_pos_bias,
            max_positions=s.max_positions,
        )
        self.self_attn = MovingAverageGatedAttention(
            **attention,
            hdim=s.hdim,
            ndim=s.ndim,
            causal=s.causal,
            bidirectional=s.bidirectional,
            chunk_size=s.chunk_size,
            truncation=s.truncation,
        )
        self.cross_attn = None
        if s.cross_attention:
            cross_positions = s.cross_max_positions or s.max_positions
            self.cross_attn = GatedCrossAttention(**dict(attention, max_positions=cross_positions))
        self.ffn = NormalizedFeedForwardNetwork(
            **sublayer, ffn_hidden_dim=s.ffn_hidden_dim, hidden_dropout=s.activation_dropout
        )

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        need_attn: bool = False,
        start_position: Optional[int] = None,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """x: T x B x C; padding_mask: B x T; encoder_out: S x B x C; encoder_padding_mask: B x S;
        start_position: the position of x's first token in its sequence, counted by the
        decoder (needed by cross-attention when decoding incrementally).

        Returns the block output (T x B x C) and, with ``need_attn``, the cross-attention
        weights (B x T x S) of decoders or the self-attention weights of other blocks.
        """
        x, attn = self.self_attn(
            x, padding_mask=padding_mask, incremental_state=incremental_state,
            need_weights=need_attn and self.cross_attn is None,
        )
        if self.cross_attn is not None:
            if encoder_out is None:
                raise ValueError("a Mega block with cross-attention needs encoder_out")
            x, attn = self.cross_attn(
                x,
                encoder_out,
                key_padding_mask=encoder_padding_mask,
                incremental_state=incremental_state,
                need_weights=need_attn,
                query_padding_mask=padding_mask,
                start_position=start_position,
            )
        x = self.ffn(x, padding_mask=padding_mask)
        return x, attn
